"""The one scorer: a score per candidate for a rendered prompt.

``likelihood``: length-normalised log-likelihood of each candidate's title after the prompt. The
prompt is run once; its KV cache is copied for a batch of candidates.
``verbalizer``: candidates are labelled A, B, C...; one forward pass; the score of a candidate is
the logit of its label's token.
``generate``: candidates are numbered 1..N; the LLM writes a ranked list (greedy decoding), parsed by
``recbole_lrgd.llm.generate``; scores descend along the parsed ranking.

``score_many`` scores a list of prompts: the users whose prompts share a prefix (one global
demonstration set) go through the model together, up to ``user_batch_size`` per forward pass, on one
copy of the prefix's KV cache expanded to the batch (suffixes right-padded, a 4D mask per row).

With a ``ScoreCache`` every score (a generated prompt's whole parsed ranking) is looked up first and
stored after: a prompt whose candidates are all cached runs no forward pass.
"""
from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from dataclasses import astuple, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from recbole_lrgd.llm.generate import FUZZY_THRESHOLD, ParseStats, parse_ranking, ranking_scores
from recbole_lrgd.llm.prompt import Prompt, encode_parts
from recbole_lrgd.llm.score_cache import ScoreCache, item_key, prompt_digest

SCORER_MODES = ("likelihood", "verbalizer", "generate")
DEFAULT_MAX_NEW_TOKENS = 100  # generate mode: "12, 3, 7, ..." for 20 candidates is about 60 tokens


def mean_token_logprob(logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of ``targets`` (n, m) under ``logprobs`` (n, m, V), ignoring masked pads."""
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def crop_to(cache, length: int) -> None:
    """Keep the first ``length`` tokens of a KV cache (transformers 5 counts the tokens to remove)."""
    extra = cache.get_seq_length() - length
    if extra <= 0:
        return
    if "tokens_to_remove" in inspect.signature(cache.crop).parameters:
        cache.crop(-extra)
    else:
        cache.crop(length)


def pack_candidates(candidates: Sequence[Sequence[int]], prefix_len: int):
    """Lay candidates side by side after a cached prefix of ``prefix_len`` tokens.

    Returns the packed input ids (every candidate token but its last), their positions (restarting
    at ``prefix_len`` for each candidate), a boolean (S, prefix_len + S) mask of what each packed
    token may attend to, and ``(candidate, packed position, next token)`` triples: the logit at that
    position predicts that token.
    """
    ids, positions, owner, source = [], [], [], []
    for k, cand in enumerate(candidates):
        for j in range(len(cand) - 1):
            source.append((k, len(ids), cand[j + 1]))
            ids.append(cand[j])
            positions.append(prefix_len + j)
            owner.append(k)
    n = len(ids)
    owner_t = torch.tensor(owner, dtype=torch.long)
    same = owner_t[:, None] == owner_t[None, :]
    causal = torch.ones((n, n), dtype=torch.bool).tril()
    allowed = torch.cat([torch.ones((n, prefix_len), dtype=torch.bool), same & causal], 1)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long), allowed, source


@dataclass
class ScoreCounts:
    """What a scorer did, summed over its prompts; subtract two snapshots for one evaluation."""

    cache_hits: int = 0  # candidate scores served from the score cache
    cache_misses: int = 0  # candidate scores looked up there in vain (then computed and stored)
    generated_prompts: int = 0  # generate mode: prompts whose output was parsed (cached or not)
    failed_prompts: int = 0  # ... whose output mentioned no candidate
    generated_candidates: int = 0  # ... candidates shown in them
    unparsed_candidates: int = 0  # ... candidates their outputs never mentioned

    def __sub__(self, other: "ScoreCounts") -> "ScoreCounts":
        return ScoreCounts(*(a - b for a, b in zip(astuple(self), astuple(other))))

    @property
    def cache_hit_rate(self) -> Optional[float]:
        looked_up = self.cache_hits + self.cache_misses
        return self.cache_hits / looked_up if looked_up else None

    @property
    def parse_failure_rate(self) -> Optional[float]:
        return self.failed_prompts / self.generated_prompts if self.generated_prompts else None

    @property
    def unparsed_rate(self) -> Optional[float]:
        return self.unparsed_candidates / self.generated_candidates if self.generated_candidates else None

    def add_parse(self, stats: ParseStats) -> None:
        self.generated_prompts += 1
        self.failed_prompts += int(stats.failed)
        self.generated_candidates += stats.candidates
        self.unparsed_candidates += stats.unparsed


class LLMScorer:
    """Scores candidates for prompts; one instance per (model, mode).

    ``score_cache`` (with ``model_id``, the identity its keys carry) makes scores persistent;
    ``max_new_tokens`` and ``match_threshold`` drive generate mode.
    """

    PREFIX_CACHE_SIZE = 4  # prefixes kept: the global demonstration set's and the zero-shot one, at least

    def __init__(self, model, tokenizer, mode: str = "likelihood", candidate_batch_size: int = 32, *,
                 score_cache: Optional[ScoreCache] = None, model_id: str = "",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, match_threshold: float = FUZZY_THRESHOLD,
                 user_batch_size: int = 8):
        if mode not in SCORER_MODES:
            raise ValueError(f"scorer_mode {mode!r}: use one of {', '.join(SCORER_MODES)}")
        if score_cache is not None and not model_id:
            raise ValueError("a score cache needs the model's identity (model_id) in its keys")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.candidate_batch_size = max(1, int(candidate_batch_size))
        self.user_batch_size = max(1, int(user_batch_size))
        self.score_cache, self.model_id = score_cache, model_id
        self.max_new_tokens, self.match_threshold = max(1, int(max_new_tokens)), float(match_threshold)
        self.counts = ScoreCounts()
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params
        self._last_only = {"logits_to_keep": 1} if self._keeps_logits else {}
        self._prefixes: "OrderedDict[tuple, tuple]" = OrderedDict()  # prefix ids -> (KV cache, last logits)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def candidate_ids(self, title: str) -> List[int]:
        ids = self.tokenizer(title, add_special_tokens=False).input_ids
        return ids or [self.tokenizer.eos_token_id]

    def _forward(self, ids: torch.Tensor, cache=None, last_only: bool = False):
        """Logits (and the KV cache); ``last_only`` skips the LM head on all but the last position."""
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        if last_only:
            kwargs.update(self._last_only)
        out = self.model(input_ids=ids.to(self.device), use_cache=True, **kwargs)
        return out.logits.float(), getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    @torch.inference_mode()
    def score(self, prompt: Prompt) -> np.ndarray:
        """Scores in the caller's candidate order (not the shown order)."""
        prefix_ids, suffix_ids = encode_parts(self.tokenizer, prompt)
        if self.mode == "generate":
            shown_scores = self._generate_scores(prompt, prefix_ids, suffix_ids)
        else:
            items = self._items(prompt)
            shown_scores = self._cached(prefix_ids + suffix_ids, items,
                                        lambda: self._forward_scores(prompt, prefix_ids, suffix_ids, items))
        return self._caller_order(prompt, shown_scores)

    @staticmethod
    def _caller_order(prompt: Prompt, shown_scores: np.ndarray) -> np.ndarray:
        scores = np.empty(len(prompt.order), dtype=np.float64)
        scores[prompt.order] = shown_scores
        return scores

    def _items(self, prompt: Prompt) -> List[Union[str, List[int]]]:
        """What is scored, in shown order: verbalizer labels, or the candidates' token ids."""
        if self.mode == "verbalizer":
            return list(prompt.labels)
        return [self.candidate_ids(prompt.candidates[i]) for i in prompt.order]

    @torch.inference_mode()
    def score_many(self, prompts: Sequence[Prompt]) -> List[np.ndarray]:
        """``[self.score(p) for p in prompts]``, with the prompts that share a prefix batched.

        The score cache is consulted per prompt as ``score`` does; the prompts with a miss are grouped by
        their prefix's token ids and go through the model ``user_batch_size`` at a time, each batch ONE
        forward pass on a copy of the prefix's KV cache (the cached one is never touched). A prompt with
        more candidates than ``candidate_batch_size`` (likelihood) or no suffix takes ``score``'s path.
        """
        if self.mode == "generate":
            return [self.score(p) for p in prompts]
        results: List[Optional[np.ndarray]] = [None] * len(prompts)
        groups: "OrderedDict[tuple, List[tuple]]" = OrderedDict()  # prefix ids -> pending prompts
        for i, prompt in enumerate(prompts):
            prefix_ids, suffix_ids = encode_parts(self.tokenizer, prompt)
            items = self._items(prompt)
            keys, found = self._lookup(prefix_ids + suffix_ids, items)
            if keys is not None and len(found) == len(keys):
                results[i] = self._caller_order(prompt, np.array([found[k][0] for k in keys], dtype=np.float64))
                continue
            job = (i, prompt, prefix_ids, suffix_ids, items, keys, found)
            too_many = self.mode == "likelihood" and len(items) > self.candidate_batch_size
            if not suffix_ids or too_many:
                fresh = self._forward_scores(prompt, prefix_ids, suffix_ids, items)
                results[i] = self._caller_order(prompt, self._store(keys, found, fresh))
                continue
            groups.setdefault(tuple(prefix_ids), []).append(job)
        for prefix, jobs in groups.items():
            if not hasattr(self._prefix(prefix)[0], "batch_repeat_interleave"):  # a legacy tuple cache
                for i, prompt, prefix_ids, suffix_ids, items, keys, found in jobs:
                    fresh = self._forward_scores(prompt, prefix_ids, suffix_ids, items)
                    results[i] = self._caller_order(prompt, self._store(keys, found, fresh))
                continue
            for start in range(0, len(jobs), self.user_batch_size):
                chunk = jobs[start: start + self.user_batch_size]
                suffixes, item_lists = [job[3] for job in chunk], [job[4] for job in chunk]
                batch = (self._batch_verbalizer(prefix, suffixes, item_lists) if self.mode == "verbalizer"
                         else self._batch_likelihood(prefix, suffixes, item_lists))
                for (i, prompt, _, _, _, keys, found), fresh in zip(chunk, batch):
                    results[i] = self._caller_order(prompt, self._store(keys, found, fresh))
        return results  # type: ignore[return-value]

    def _cached(self, prompt_ids: Sequence[int], items: Sequence, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Shown-order scores from the score cache when all are there; else ``compute`` all and store the new.

        Where some were cached, the cached value is returned (not the fresh one, which may differ in the
        last bits through chunking), so every run reading this cache sees one score per key.
        """
        keys, found = self._lookup(prompt_ids, items)
        if keys is not None and len(found) == len(keys):
            return np.array([found[k][0] for k in keys], dtype=np.float64)
        return self._store(keys, found, compute())

    def _lookup(self, prompt_ids: Sequence[int], items: Sequence) -> Tuple[Optional[List[str]], Dict]:
        """The score cache's keys for a prompt's items and the entries found (counted); ``(None, {})``
        without a cache."""
        if self.score_cache is None:
            return None, {}
        digest = prompt_digest(self.model_id, self.mode, prompt_ids)
        keys = [item_key(digest, item) for item in items]
        found = self.score_cache.get(keys)
        hits = sum(k in found for k in keys)
        self.counts.cache_hits += hits
        self.counts.cache_misses += len(keys) - hits
        return keys, found

    def _store(self, keys: Optional[List[str]], found: Dict, fresh: np.ndarray) -> np.ndarray:
        """Store the fresh scores that were missing; return the cached value where there was one."""
        if keys is None:
            return np.asarray(fresh, dtype=np.float64)
        self.score_cache.put({k: [v] for k, v in zip(keys, fresh) if k not in found})
        return np.array([found[k][0] if k in found else v for k, v in zip(keys, fresh)], dtype=np.float64)

    def _forward_scores(self, prompt: Prompt, prefix_ids: Sequence[int], suffix_ids: Sequence[int],
                        items: Sequence) -> np.ndarray:
        """Likelihood or verbalizer scores in shown order, from the model."""
        last, cache = self._context(prefix_ids, suffix_ids)
        try:
            if self.mode == "verbalizer":
                return last[self.label_token_ids(items)].double().cpu().numpy()
            return self.likelihood(last, cache, len(prefix_ids) + len(suffix_ids), items)
        finally:
            crop_to(cache, len(prefix_ids))  # the shared prefix's cache is left as it was found

    def _generate_scores(self, prompt: Prompt, prefix_ids: Sequence[int], suffix_ids: Sequence[int]) -> np.ndarray:
        """Shown-order scores from the parsed ranking; the score cache holds the ranking per prompt."""
        shown = [prompt.candidates[i] for i in prompt.order]
        key = prompt_digest(self.model_id, self.mode, list(prefix_ids) + list(suffix_ids),
                            self.max_new_tokens, self.match_threshold)
        found = self.score_cache.get([key]) if self.score_cache is not None else {}
        if key in found:
            ranking = [int(k) for k in found[key]]
            self.counts.cache_hits += len(shown)
        else:
            ranking = parse_ranking(self.generate(prefix_ids, suffix_ids), shown, self.match_threshold)
            if self.score_cache is not None:
                self.counts.cache_misses += len(shown)
                self.score_cache.put({key: ranking})
        self.counts.add_parse(ParseStats(len(ranking), len(shown)))
        return ranking_scores(ranking, len(shown))

    def generate(self, prefix_ids: Sequence[int], suffix_ids: Sequence[int]) -> str:
        """Greedy continuation of prefix + suffix, decoded; the prefix's KV cache is reused and left intact."""
        cache, _ = self._prefix(prefix_ids)
        ids = torch.tensor([list(prefix_ids) + list(suffix_ids)], device=self.device)
        try:
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      generation_config=self._greedy_config(), **{self._cache_kw: cache})
        finally:
            crop_to(cache, len(prefix_ids))
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def _greedy_config(self):
        """The model's generation config (its stop tokens) made greedy, with our token budget."""
        config = copy.deepcopy(self.model.generation_config)
        config.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                      max_new_tokens=self.max_new_tokens)
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        return config

    def _prefix(self, prefix_ids: Sequence[int]):
        """KV cache and last-position logits of the shared prefix, encoded once per run (LRU of a few)."""
        key = tuple(prefix_ids)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
        else:
            logits, cache = self._forward(torch.tensor([list(prefix_ids)]), last_only=True)
            self._prefixes[key] = (cache, logits[0, -1])
            while len(self._prefixes) > self.PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        return self._prefixes[key]

    def _context(self, prefix_ids: Sequence[int], suffix_ids: Sequence[int]):
        """Last-position logits and KV cache of prefix + suffix; the prefix is encoded once per run."""
        cache, last = self._prefix(prefix_ids)
        if suffix_ids:
            logits, cache = self._forward(torch.tensor([list(suffix_ids)]), cache, last_only=True)
            last = logits[0, -1]
        return last, cache

    def likelihood(self, last: torch.Tensor, cache, context_len: int,
                   candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """Score chunks of candidates, each chunk ONE packed sequence on the context's KV cache.

        Packing (each candidate sees the context and its own tokens, positions restart after the
        context) avoids copying the cache once per candidate.
        """
        first = torch.log_softmax(last.float(), -1)
        prefix = context_len
        out = []
        for start in range(0, len(candidates), self.candidate_batch_size):
            chunk = candidates[start: start + self.candidate_batch_size]
            scores = [first[c[0]].item() for c in chunk]  # log p(first token | prompt)
            ids, positions, allowed, source = pack_candidates(chunk, prefix)
            if len(ids):
                mask = torch.zeros(allowed.shape, dtype=self.model.dtype)
                mask.masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
                later = self.model(input_ids=ids[None].to(self.device), position_ids=positions[None].to(self.device),
                                   attention_mask=mask[None, None].to(self.device), use_cache=True,
                                   **{self._cache_kw: cache}).logits[0].float()
                crop_to(cache, prefix)
                logprobs = torch.log_softmax(later, -1).cpu()
                for (k, pos, token) in source:
                    scores[k] += logprobs[pos, token].item()
            out += [total / len(c) for total, c in zip(scores, chunk)]
        return np.array(out, dtype=np.float64)

    # -- several users' suffixes in one forward pass on the shared prefix's KV cache ---------------
    def _batch_forward(self, prefix: Sequence[int], rows: Sequence[Tuple[List[int], List[int], torch.Tensor]],
                       needed: Sequence[Sequence[int]]):
        """ONE forward of right-padded rows on a copy of the prefix's KV cache expanded to the batch.

        ``rows[b] = (ids, positions, allowed)``: the row's tokens, their positions and a boolean
        (len, prefix + len) mask of what each may attend to; ``needed[b]`` the row positions whose logits
        are read. Returns float logits (B, K, V) at the union of the needed positions and a map from row
        position to its index in K. Padded tokens attend to the prefix only (no empty softmax row) and
        nothing attends to them.
        """
        cache, _ = self._prefix(prefix)
        batch = copy.deepcopy(cache)  # the cached prefix stays as it is
        batch.batch_repeat_interleave(len(rows))
        p, width = len(prefix), max(len(ids) for ids, _, _ in rows)
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        ids = torch.full((len(rows), width), pad or 0, dtype=torch.long)
        positions = torch.full((len(rows), width), p, dtype=torch.long)
        allowed = torch.zeros((len(rows), width, p + width), dtype=torch.bool)
        allowed[:, :, :p] = True
        for b, (row_ids, row_pos, row_allowed) in enumerate(rows):
            n = len(row_ids)
            ids[b, :n] = torch.as_tensor(row_ids, dtype=torch.long)
            positions[b, :n] = torch.as_tensor(row_pos, dtype=torch.long)
            allowed[b, :n, : p + n] = row_allowed
        mask = torch.zeros(allowed.shape, dtype=self.model.dtype)
        mask.masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
        keep = sorted({pos for row in needed for pos in row})
        extra = {"logits_to_keep": torch.tensor(keep, device=self.device)} if self._keeps_logits else {}
        logits = self.model(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                            attention_mask=mask[:, None].to(self.device), use_cache=True,
                            **{self._cache_kw: batch}, **extra).logits
        if not self._keeps_logits:
            logits = logits[:, keep]
        return logits.float(), {pos: k for k, pos in enumerate(keep)}

    @staticmethod
    def _suffix_row(prefix_len: int, suffix: Sequence[int]):
        """A suffix alone as a batch row: causal after the prefix, positions continuing it."""
        n = len(suffix)
        allowed = torch.cat([torch.ones((n, prefix_len), dtype=torch.bool),
                             torch.ones((n, n), dtype=torch.bool).tril()], 1)
        return list(suffix), list(range(prefix_len, prefix_len + n)), allowed

    def _batch_verbalizer(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                          label_lists: Sequence[Sequence[str]]) -> List[np.ndarray]:
        """Label logits at each row's last real position, for a batch of users sharing ``prefix``."""
        rows = [self._suffix_row(len(prefix), s) for s in suffixes]
        logits, index = self._batch_forward(prefix, rows, [[len(s) - 1] for s in suffixes])
        return [logits[b, index[len(s) - 1], self.label_token_ids(labels)].double().cpu().numpy()
                for b, (s, labels) in enumerate(zip(suffixes, label_lists))]

    def _batch_likelihood(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                          candidate_lists: Sequence[Sequence[Sequence[int]]]) -> List[np.ndarray]:
        """Likelihood scores for a batch of users sharing ``prefix``: each row is the user's suffix and then
        its candidates packed as ``pack_candidates`` lays them (each sees the prefix, the whole suffix and
        its own earlier tokens; positions restart after the suffix)."""
        p = len(prefix)
        rows, needed, sources = [], [], []
        for suffix, cands in zip(suffixes, candidate_lists):
            n = len(suffix)
            s_ids, s_pos, s_allowed = self._suffix_row(p, suffix)
            c_ids, c_pos, c_allowed, source = pack_candidates(cands, p + n)  # c_allowed: (m, p + n + m)
            m = len(c_ids)
            allowed = torch.zeros((n + m, p + n + m), dtype=torch.bool)
            allowed[:n, : p + n] = s_allowed
            allowed[n:] = c_allowed
            rows.append((s_ids + c_ids.tolist(), s_pos + c_pos.tolist(), allowed))
            needed.append([n - 1] + [n + pos for _, pos, _ in source])
            sources.append(source)
        logits, index = self._batch_forward(prefix, rows, needed)
        picked_b, picked_k, picked_t, owner = [], [], [], []  # every (row, kept position, token) read
        for b, (suffix, cands, source) in enumerate(zip(suffixes, candidate_lists, sources)):
            n = len(suffix)
            for c, cand in enumerate(cands):  # log p(first token | prompt), from the suffix's last position
                picked_b.append(b), picked_k.append(index[n - 1]), picked_t.append(cand[0]), owner.append((b, c))
            for (c, pos, token) in source:
                picked_b.append(b), picked_k.append(index[n + pos]), picked_t.append(token), owner.append((b, c))
        bi, ki = torch.tensor(picked_b, device=logits.device), torch.tensor(picked_k, device=logits.device)
        lse = torch.logsumexp(logits, -1)  # (B, K): the softmax's normaliser only where read
        logprobs = (logits[bi, ki, torch.tensor(picked_t, device=logits.device)] - lse[bi, ki]).double().cpu()
        totals = [np.zeros(len(cands), dtype=np.float64) for cands in candidate_lists]
        for (b, c), lp in zip(owner, logprobs.tolist()):
            totals[b][c] += lp
        return [total / np.array([len(c) for c in cands], dtype=np.float64)
                for total, cands in zip(totals, candidate_lists)]

    def naive_likelihood(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """Reference: the full prompt + candidate, one forward pass per candidate (slow, for tests)."""
        out = []
        for cand in candidates:
            ids = torch.tensor([list(prompt_ids) + list(cand)])
            logits, _ = self._forward(ids)
            logprobs = torch.log_softmax(logits[:, len(prompt_ids) - 1: -1], -1)
            target = torch.tensor([list(cand)], device=logprobs.device)
            out.append(mean_token_logprob(logprobs, target, torch.ones_like(target, dtype=logprobs.dtype)).item())
        return np.array(out, dtype=np.float64)

    def label_token_ids(self, labels: Sequence[str]) -> List[int]:
        ids = [self.tokenizer(label, add_special_tokens=False).input_ids for label in labels]
        if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(ids):
            raise ValueError("verbalizer labels must be distinct single tokens for this tokenizer")
        return [i[0] for i in ids]

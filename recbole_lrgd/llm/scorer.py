"""The scorers: a score per candidate for a rendered prompt, in the caller's candidate order.

``likelihood``: length-normalised log-likelihood of each candidate's title after the prompt.
``verbalizer``: candidates are labelled A, B, C...; the score of a candidate is the logit of its label's
token after the prompt.
Both are ``LLMScorer``; ``generate`` (the LLM writes a ranked list) is ``GenerateScorer`` in
``recbole_lrgd.llm.generate``. ``make_scorer`` builds the one a mode needs; all share ``Scorer``.

There is one way to run the model: ``score_many``. Its prompts are grouped by their shared prefix
(instruction + demonstrations), whose KV cache is computed once and kept; the users' suffixes (with, in
likelihood mode, their candidates packed after them) are right-padded rows of ONE forward pass on a
copy of that cache. ``score(prompt)`` is ``score_many([prompt])[0]``.

With a ``ScoreCache`` every score is looked up first and stored after: a prompt whose candidates are
all cached runs no forward pass.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import astuple, dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from recbole_lrgd.llm.kv_cache import KVModel
from recbole_lrgd.llm.prompt import Prompt, encode_parts
from recbole_lrgd.llm.score_cache import ScoreCache, item_key, prompt_digest

if TYPE_CHECKING:
    from recbole_lrgd.llm.generate import ParseStats

SCORER_MODES = ("likelihood", "verbalizer", "generate")
DEFAULT_MAX_NEW_TOKENS = 100  # kept for model/lrgd.py until it uses make_scorer (the YAML holds the default)


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

    def add_parse(self, stats: "ParseStats") -> None:
        self.generated_prompts += 1
        self.failed_prompts += int(stats.failed)
        self.generated_candidates += stats.candidates
        self.unparsed_candidates += stats.unparsed


class Scorer:
    """What every mode shares: the model on KV caches, the shared prefixes' caches, the score cache and
    the counts. Subclasses implement ``score_many``.

    ``score_cache`` (with ``model_id``, the identity its keys carry) makes scores persistent;
    ``user_batch_size`` is how many rows go through the model in one forward pass (a row per user, unless
    a likelihood user has more candidates than a row holds); callers chunk their users by it.
    """

    PREFIX_CACHE_SIZE = 4  # prefixes kept: the global demonstration set's and the zero-shot one, at least

    def __init__(self, model, tokenizer, mode: str, *, user_batch_size: int, score_cache: Optional[ScoreCache],
                 model_id: str):
        if score_cache is not None and not model_id:
            raise ValueError("a score cache needs the model's identity (model_id) in its keys")
        self.model, self.lm, self.tokenizer, self.mode = model, KVModel(model), tokenizer, mode
        self.user_batch_size = max(1, int(user_batch_size))
        self.score_cache, self.model_id = score_cache, model_id
        self.counts = ScoreCounts()
        self._prefixes: "OrderedDict[tuple, tuple]" = OrderedDict()  # prefix ids -> (KV cache, last logits)

    def score(self, prompt: Prompt) -> np.ndarray:
        """Scores in the caller's candidate order (not the shown order)."""
        return self.score_many([prompt])[0]

    def score_many(self, prompts: Sequence[Prompt]) -> List[np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def caller_order(prompt: Prompt, shown_scores: Sequence[float]) -> np.ndarray:
        scores = np.empty(len(prompt.order), dtype=np.float64)
        scores[prompt.order] = shown_scores
        return scores

    def _prefix(self, prefix_ids: Sequence[int]):
        """KV cache and last-position logits of a shared prefix, encoded once per run (LRU of a few).
        Callers leave the cache as they found it."""
        key = tuple(prefix_ids)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
        else:
            self._prefixes[key] = self.lm.prefill(prefix_ids)
            while len(self._prefixes) > self.PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        return self._prefixes[key]

    # -- the score cache -------------------------------------------------------------------------
    def _digest(self, prompt_ids: Sequence[int], *settings) -> Optional[str]:
        """The score-cache digest of a prompt under this model and mode; None without a cache."""
        if self.score_cache is None:
            return None
        return prompt_digest(self.model_id, self.mode, list(prompt_ids), *settings)

    def _lookup(self, keys: Optional[List[str]], weight: int = 1) -> Dict:
        """The score-cache entries found for ``keys`` (``{}`` without a cache), counted as hits and misses
        of ``weight`` candidate scores each."""
        if keys is None:
            return {}
        found = self.score_cache.get(keys)
        hits = sum(k in found for k in keys)
        self.counts.cache_hits += hits * weight
        self.counts.cache_misses += (len(keys) - hits) * weight
        return found


class LLMScorer(Scorer):
    """Likelihood and verbalizer scores from one forward pass per batch of rows.

    A row is one user's suffix after the shared prefix; in likelihood mode its candidates follow it,
    packed (``pack_candidates``), at most ``candidate_batch_size`` per row: a user with more candidates
    takes several rows, each repeating the suffix.
    """

    def __new__(cls, model, tokenizer, mode, *args, **kwargs):
        """Kept for model/lrgd.py until it uses make_scorer: its ``LLMScorer(...)`` also built generate mode."""
        if mode == "generate":
            from recbole_lrgd.llm.generate import GenerateScorer

            return GenerateScorer(model, tokenizer, **{k: kwargs[k] for k in (
                "user_batch_size", "score_cache", "model_id", "max_new_tokens", "match_threshold")})
        return super().__new__(cls)

    def __init__(self, model, tokenizer, mode: str, candidate_batch_size: int, *, user_batch_size: int,
                 score_cache: Optional[ScoreCache], model_id: str,
                 max_new_tokens: Optional[int] = None, match_threshold: Optional[float] = None):
        # max_new_tokens, match_threshold: ignored, kept for model/lrgd.py until it uses make_scorer
        if mode not in ("likelihood", "verbalizer"):
            raise ValueError(f"scorer_mode {mode!r}: use one of {', '.join(SCORER_MODES)}")
        super().__init__(model, tokenizer, mode, user_batch_size=user_batch_size, score_cache=score_cache,
                         model_id=model_id)
        self.candidate_batch_size = max(1, int(candidate_batch_size))

    def candidate_ids(self, title: str) -> List[int]:
        ids = self.tokenizer(title, add_special_tokens=False).input_ids
        return ids or [self.tokenizer.eos_token_id]

    def label_token_ids(self, labels: Sequence[str]) -> List[int]:
        ids = [self.tokenizer(label, add_special_tokens=False).input_ids for label in labels]
        if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(ids):
            raise ValueError("verbalizer labels must be distinct single tokens for this tokenizer")
        return [i[0] for i in ids]

    def _items(self, prompt: Prompt) -> List[Union[str, List[int]]]:
        """What is scored, in shown order: verbalizer labels, or the candidates' token ids."""
        if self.mode == "verbalizer":
            return list(prompt.labels)
        return [self.candidate_ids(prompt.candidates[i]) for i in prompt.order]

    @torch.inference_mode()
    def score_many(self, prompts: Sequence[Prompt]) -> List[np.ndarray]:
        """Scores of each prompt in its caller's candidate order.

        The score cache is consulted per prompt; where some of a prompt's scores are cached, the cached
        value is returned (a fresh one may differ in the last bits through batching), so every run
        reading the cache sees one score per key. The prompts with a miss are grouped by their prefix's
        token ids and scored group by group (``_score_group``).
        """
        results: List[Optional[np.ndarray]] = [None] * len(prompts)
        groups: "OrderedDict[tuple, List[tuple]]" = OrderedDict()  # prefix ids -> pending prompts
        for i, prompt in enumerate(prompts):
            prefix_ids, suffix_ids = encode_parts(self.tokenizer, prompt)
            items = self._items(prompt)
            digest = self._digest(prefix_ids + suffix_ids)
            keys = None if digest is None else [item_key(digest, item) for item in items]
            found = self._lookup(keys)
            if keys is not None and len(found) == len(keys):
                results[i] = self.caller_order(prompt, [found[k][0] for k in keys])
                continue
            groups.setdefault(tuple(prefix_ids), []).append((i, suffix_ids, items, keys, found))
        for prefix, jobs in groups.items():
            fresh = self._score_group(prefix, [(suffix, items) for _, suffix, items, _, _ in jobs])
            for (i, _, _, keys, found), scores in zip(jobs, fresh):
                if keys is not None:
                    self.score_cache.put({k: [v] for k, v in zip(keys, scores) if k not in found})
                    scores = [found[k][0] if k in found else v for k, v in zip(keys, scores)]
                results[i] = self.caller_order(prompts[i], scores)
        return results  # type: ignore[return-value]

    def _score_group(self, prefix: Sequence[int], jobs: Sequence[Tuple[List[int], list]]) -> List[np.ndarray]:
        """Shown-order scores of ``(suffix, items)`` jobs sharing ``prefix``: their rows go through the model
        ``user_batch_size`` at a time, each batch ONE forward pass."""
        rows, owners = [], []
        for j, (suffix, items) in enumerate(jobs):
            size = self.candidate_batch_size if self.mode == "likelihood" else max(1, len(items))
            for start in range(0, max(1, len(items)), size):
                rows.append((suffix, items[start: start + size]))
                owners.append(j)
        parts: List[List[np.ndarray]] = [[] for _ in jobs]
        batch_rows = self._batch_verbalizer if self.mode == "verbalizer" else self._batch_likelihood
        for start in range(0, len(rows), self.user_batch_size):
            for j, scores in zip(owners[start:], batch_rows(prefix, rows[start: start + self.user_batch_size])):
                parts[j].append(scores)
        return [np.concatenate(p) for p in parts]

    def _batch_forward(self, prefix: Sequence[int], rows: Sequence[Tuple[List[int], List[int], torch.Tensor]],
                       needed: Sequence[Sequence[int]]):
        """ONE forward of right-padded rows on a copy of the prefix's KV cache expanded to the batch.

        ``rows[b] = (ids, positions, allowed)``: the row's tokens, their positions and a boolean
        (len, prefix + len) mask of what each may attend to; ``needed[b]`` the row positions whose logits
        are read, where -1 is the prefix's last token (the first prediction of a row with no suffix).
        Returns float logits (B, K, V) at the union of the needed positions and a map from row position
        to its index in K. Padded tokens attend to the prefix only (no empty softmax row) and nothing
        attends to them.
        """
        cache, last = self._prefix(prefix)
        p, width = len(prefix), max(len(ids) for ids, _, _ in rows)
        keep = sorted({pos for row in needed for pos in row if pos >= 0})
        logits = torch.empty((len(rows), 0, last.shape[-1]), device=last.device)
        if keep:
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
            logits, _ = self.lm.forward(ids, self.lm.expand(cache, len(rows)), positions=positions, allowed=allowed,
                                        keep=keep)
        index = {pos: k for k, pos in enumerate(keep)}
        if any(-1 in row for row in needed):
            logits = torch.cat([logits, last.to(logits.device).expand(len(rows), 1, -1)], 1)
            index[-1] = len(keep)
        return logits, index

    @staticmethod
    def _suffix_row(prefix_len: int, suffix: Sequence[int]):
        """A suffix alone as a batch row: causal after the prefix, positions continuing it."""
        n = len(suffix)
        allowed = torch.cat([torch.ones((n, prefix_len), dtype=torch.bool),
                             torch.ones((n, n), dtype=torch.bool).tril()], 1)
        return list(suffix), list(range(prefix_len, prefix_len + n)), allowed

    def _batch_verbalizer(self, prefix: Sequence[int], rows: Sequence[Tuple[List[int], List[str]]]) -> List[np.ndarray]:
        """Label logits after each row's suffix, for ``(suffix, labels)`` rows sharing ``prefix``."""
        logits, index = self._batch_forward(prefix, [self._suffix_row(len(prefix), s) for s, _ in rows],
                                            [[len(s) - 1] for s, _ in rows])
        return [logits[b, index[len(s) - 1], self.label_token_ids(labels)].double().cpu().numpy()
                for b, (s, labels) in enumerate(rows)]

    def _batch_likelihood(self, prefix: Sequence[int], rows: Sequence[Tuple[List[int], List[List[int]]]]
                          ) -> List[np.ndarray]:
        """Likelihood scores of ``(suffix, candidates)`` rows sharing ``prefix``: each row is the suffix and
        then its candidates packed as ``pack_candidates`` lays them (each sees the prefix, the whole suffix
        and its own earlier tokens; positions restart after the suffix)."""
        p = len(prefix)
        batch, needed, sources = [], [], []
        for suffix, cands in rows:
            n = len(suffix)
            s_ids, s_pos, s_allowed = self._suffix_row(p, suffix)
            c_ids, c_pos, c_allowed, source = pack_candidates(cands, p + n)  # c_allowed: (m, p + n + m)
            m = len(c_ids)
            allowed = torch.zeros((n + m, p + n + m), dtype=torch.bool)
            allowed[:n, : p + n] = s_allowed
            allowed[n:] = c_allowed
            batch.append((s_ids + c_ids.tolist(), s_pos + c_pos.tolist(), allowed))
            needed.append([n - 1] + [n + pos for _, pos, _ in source])
            sources.append(source)
        logits, index = self._batch_forward(prefix, batch, needed)
        picked_b, picked_k, picked_t, owner = [], [], [], []  # every (row, kept position, token) read
        for b, ((suffix, cands), source) in enumerate(zip(rows, sources)):
            n = len(suffix)
            for c, cand in enumerate(cands):  # log p(first token | prompt), after the suffix's last token
                picked_b.append(b), picked_k.append(index[n - 1]), picked_t.append(cand[0]), owner.append((b, c))
            for (c, pos, token) in source:
                picked_b.append(b), picked_k.append(index[n + pos]), picked_t.append(token), owner.append((b, c))
        bi, ki = torch.tensor(picked_b, device=logits.device), torch.tensor(picked_k, device=logits.device)
        lse = torch.logsumexp(logits, -1)  # (B, K): the softmax's normaliser only where read
        logprobs = (logits[bi, ki, torch.tensor(picked_t, device=logits.device)] - lse[bi, ki]).double().cpu()
        totals = [np.zeros(len(cands), dtype=np.float64) for _, cands in rows]
        for (b, c), lp in zip(owner, logprobs.tolist()):
            totals[b][c] += lp
        return [total / np.array([len(c) for c in cands], dtype=np.float64)
                for total, (_, cands) in zip(totals, rows)]


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


def make_scorer(model, tokenizer, *, mode: str, candidate_batch_size: int, user_batch_size: int,
                score_cache: Optional[ScoreCache], model_id: str, max_new_tokens: int,
                match_threshold: float) -> Scorer:
    """The scorer for ``mode``: an ``LLMScorer`` (likelihood, verbalizer) or a ``GenerateScorer``, each given
    the settings its mode uses (their defaults live in properties/model/LRGD.yaml)."""
    from recbole_lrgd.llm.generate import GenerateScorer  # generate.py builds on Scorer, above

    if mode == "generate":
        return GenerateScorer(model, tokenizer, user_batch_size=user_batch_size, score_cache=score_cache,
                              model_id=model_id, max_new_tokens=max_new_tokens, match_threshold=match_threshold)
    return LLMScorer(model, tokenizer, mode, candidate_batch_size, user_batch_size=user_batch_size,
                     score_cache=score_cache, model_id=model_id)


# -- the reference the batched path is tested and benchmarked against ----------------------------
def mean_token_logprob(logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of ``targets`` (n, m) under ``logprobs`` (n, m, V), ignoring masked pads."""
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1) / mask.sum(-1).clamp(min=1)


@torch.inference_mode()
def naive_likelihood(model, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> np.ndarray:
    """Reference likelihood scores: the full prompt + one candidate per forward pass, no KV cache (slow)."""
    out = []
    device = next(model.parameters()).device
    for cand in candidates:
        ids = torch.tensor([list(prompt_ids) + list(cand)], device=device)
        logits = model(input_ids=ids).logits.float()
        logprobs = torch.log_softmax(logits[:, len(prompt_ids) - 1: -1], -1)
        target = torch.tensor([list(cand)], device=logprobs.device)
        out.append(mean_token_logprob(logprobs, target, torch.ones_like(target, dtype=logprobs.dtype)).item())
    return np.array(out, dtype=np.float64)

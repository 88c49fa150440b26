"""The scorers: a score per candidate for a rendered prompt, in the caller's candidate order.

``likelihood``: log-likelihood of each candidate's title after the prompt, reduced over its tokens as
``title_score`` says (``llm/title_score.py``: their mean, their sum, or the mean of the first few).
``verbalizer``: candidates are labelled A, B, C...; the score of a candidate is the logit of its label's
token after the prompt.
Both are ``LLMScorer``; ``generate`` (the LLM writes a ranked list) is ``GenerateScorer`` in
``recbole_lrgd.llm.generate``; ``recbole_lrgd.llm.modes.make_scorer`` builds the one a mode needs. All
share ``Scorer``.

There is one way to run the model: ``score_many``. A prompt is a prefix (instruction + demonstrations)
and the user's suffix; in likelihood mode its candidates are packed after the suffix. A prompt's row (or rows)
runs on its prefix's KV cache, the rows of a batch right-padded in ONE forward pass (``llm/batching.py`` says
which rows share a batch: ``user_batch_size`` of them, or as many as a token budget holds):

- a prefix shared by a whole batch of rows (one demonstration set for all users) is encoded once and
  kept (a small LRU); its rows run on copies of that cache;
- the other rows (per-user demonstrations: ``nearest``, the optimizer's per-user scope) share batches
  whatever their prefixes: the batch's distinct prefixes are encoded together, each once, in one padded
  forward on the kept cache of the start they all share (the instruction), and row b's cache holds its
  own prefix, the pads masked, its positions continuing it.

Which rows share a batch depends on the prompts of the call alone (the scorer's ``batching``), never on
what ran before, so a caller's chunk scores the same wherever it is dealt (sharding).
``score(prompt)`` is ``score_many([prompt])[0]``.

With a ``ScoreCache`` every score is looked up first and stored after: a prompt whose candidates are
all cached runs no forward pass. A likelihood pass stores every ``title_score`` reduction of its token
log-probs, each under its own key, so switching the reduction later scores nothing again.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from recbole_lrgd.llm.batching import Batching
from recbole_lrgd.llm.counts import ScoreCounts
from recbole_lrgd.llm.kv_cache import KVModel
from recbole_lrgd.llm.prompt import Prompt, encode_parts
from recbole_lrgd.llm.score_cache import ScoreCache, item_key, prompt_digest
from recbole_lrgd.llm.title_score import check_title_score, reduction_settings, title_logprob
from recbole_lrgd.settings import SCORER_MODES, TITLE_SCORES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Scorer:
    """What every mode shares: the model on KV caches, the shared prefixes' caches, the score cache and
    the counts. Subclasses implement ``score_many``.

    ``score_cache`` (with ``model_id``, the identity its keys carry) makes scores persistent;
    ``batching`` says which rows go through the model in one forward pass (a row per user, unless a
    likelihood user has more candidates than a row holds); callers hand it ``chunk_users`` users at a time.
    """

    PREFIX_CACHE_SIZE = 4  # prefixes kept: the global demonstration set's and the zero-shot one, at least

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, mode: str, *, batching: Batching,
                 score_cache: Optional[ScoreCache], model_id: str):
        if score_cache is not None and not model_id:
            raise ValueError("a score cache needs the model's identity (model_id) in its keys")
        self.model, self.lm, self.tokenizer, self.mode = model, KVModel(model), tokenizer, mode
        self.batching = batching
        self.score_cache, self.model_id = score_cache, model_id
        self.counts = ScoreCounts()
        self._prefixes: "OrderedDict[tuple, tuple]" = OrderedDict()  # prefix ids -> (KV cache, last logits)

    @property
    def chunk_users(self) -> int:
        """Users a caller scores in one ``score_many`` call: the unit of batching, sharding and progress."""
        return self.batching.chunk_users

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

    def forget_prefixes(self) -> None:
        """Drop the shared prefixes encoded so far: the next prompt encodes its prefix afresh (a cold start, as a
        speed benchmark times it). Scores do not change."""
        self._prefixes.clear()

    def _prefix(self, prefix_ids: Sequence[int]):
        """KV cache and last-position logits of a shared prefix, encoded once per run (LRU of a few).
        Callers leave the cache as they found it."""
        key = tuple(prefix_ids)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
        else:
            cache, last = self.lm.prefill([key])
            self.counts.add_forward([len(key)])
            self._prefixes[key] = cache, last[0]
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

    A row is one user's suffix after its prefix; in likelihood mode its candidates follow it, packed
    (``pack_candidates``), at most ``candidate_batch_size`` per row: a user with more candidates takes
    several rows, each repeating the suffix. ``title_score`` and ``title_score_tokens`` are
    ``title_logprob``'s ``how`` and ``first_tokens`` (likelihood mode); ``mean`` needs no tokens.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, mode: str,
                 candidate_batch_size: int, *, batching: Batching,
                 score_cache: Optional[ScoreCache], model_id: str, title_score: str,
                 title_score_tokens: Optional[int]):
        if mode not in ("likelihood", "verbalizer"):
            raise ValueError(f"scorer_mode {mode!r}: use one of {', '.join(SCORER_MODES)}")
        check_title_score(title_score, title_score_tokens)
        super().__init__(model, tokenizer, mode, batching=batching, score_cache=score_cache, model_id=model_id)
        self.candidate_batch_size = max(1, int(candidate_batch_size))
        self.title_score, self.title_score_tokens = title_score, title_score_tokens

    def variant(self, **keys: Optional[Union[str, int]]) -> "LLMScorer":
        """A scorer of the same model, score cache and batch sizes with another ``title_score`` and/or
        ``title_score_tokens`` (its own prefix caches and counts)."""
        reduction = {"title_score": self.title_score, "title_score_tokens": self.title_score_tokens, **keys}
        return LLMScorer(self.model, self.tokenizer, self.mode, self.candidate_batch_size,
                         batching=self.batching, score_cache=self.score_cache, model_id=self.model_id,
                         **reduction)

    @property
    def score_settings(self) -> tuple:
        """The settings besides model, mode and prompt that a score depends on, for the cache digest: none
        for verbalizer labels and for the mean (the default keeps the shortest digest), the reduction otherwise,
        with its token count for ``first``."""
        return self._settings(self.title_score, self.title_score_tokens)

    def _settings(self, how: str, tokens: Optional[int]) -> tuple:
        """A reduction's settings in the cache digest: none in verbalizer mode (labels have no reduction)."""
        return reduction_settings(how, tokens) if self.mode == "likelihood" else ()

    @property
    def reductions(self) -> List[Tuple[str, Optional[int]]]:
        """The reductions a likelihood pass computes, this scorer's first: with a score cache, every
        ``TITLE_SCORES`` one too (``first`` with this scorer's token count, when it has one), each stored
        under its own key; else its own alone."""
        own = (self.title_score, self.title_score_tokens if self.title_score == "first" else None)
        if self.mode != "likelihood" or self.score_cache is None:
            return [own]
        others = [(how, self.title_score_tokens if how == "first" else None) for how in TITLE_SCORES]
        return [own] + [r for r in others if r != own and (r[0] != "first" or r[1])]

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
        reading the cache sees one score per key. The prompts with a miss are scored together
        (``_score_jobs``).
        """
        results: List[Optional[np.ndarray]] = [None] * len(prompts)
        pending = []  # (prompt index, prompt ids, prefix length, items, cache keys, cached scores)
        for i, prompt in enumerate(prompts):
            prefix_ids, suffix_ids = encode_parts(self.tokenizer, prompt)
            items = self._items(prompt)
            digest = self._digest(prefix_ids + suffix_ids, *self.score_settings)
            keys = None if digest is None else [item_key(digest, item) for item in items]
            found = self._lookup(keys)
            if keys is not None and len(found) == len(keys):
                results[i] = self.caller_order(prompt, [found[k][0] for k in keys])
                continue
            pending.append((i, prefix_ids + suffix_ids, len(prefix_ids), items, keys, found))
        fresh = self._score_jobs([(tuple(ids[:p]), ids[p:], items) for _, ids, p, items, _, _ in pending])
        reductions = self.reductions
        for (i, ids, _, items, keys, found), scores in zip(pending, fresh):
            scores = scores.reshape(len(items), len(reductions))  # a column per reduction, this scorer's first
            own = scores[:, 0]
            if keys is not None:  # a key already present keeps its value
                self.score_cache.put({k: [v] for k, v in zip(keys, own)})
                for r, (how, tokens) in enumerate(reductions[1:], 1):
                    digest = self._digest(ids, *self._settings(how, tokens))
                    self.score_cache.put({item_key(digest, item): [v] for item, v in zip(items, scores[:, r])})
                own = [found[k][0] if k in found else v for k, v in zip(keys, own)]
            results[i] = self.caller_order(prompts[i], own)
        return results  # type: ignore[return-value]

    def _score_jobs(self, jobs: Sequence[Tuple[tuple, List[int], list]]) -> List[np.ndarray]:
        """Shown-order scores of ``(prefix, suffix, items)`` jobs, (items, reductions) in likelihood mode and
        (items,) in verbalizer mode: their rows go through the model in the batches ``batching`` plans, each
        batch ONE forward pass (after the prefill of its new prefixes)."""
        rows, owners = [], []
        for j, (prefix, suffix, items) in enumerate(jobs):
            size = self.candidate_batch_size if self.mode == "likelihood" else max(1, len(items))
            for start in range(0, max(1, len(items)), size):
                rows.append((prefix, suffix, items[start: start + size]))
                owners.append(j)
        scores: List[Optional[np.ndarray]] = [None] * len(rows)
        batch_rows = self._batch_verbalizer if self.mode == "verbalizer" else self._batch_likelihood
        for batch in self.batching.plan([prefix for prefix, _, _ in rows], [self.row_width(r) for r in rows]):
            for r, row_scores in zip(batch, batch_rows([rows[r] for r in batch])):
                scores[r] = row_scores
        parts: List[List[np.ndarray]] = [[] for _ in jobs]
        for j, row_scores in zip(owners, scores):  # a job's rows are consecutive, in item order
            parts[j].append(row_scores)
        return [np.concatenate(p) for p in parts]

    def row_width(self, row: Tuple[tuple, List[int], list]) -> int:
        """A row's own tokens after its prefix: the suffix, and in likelihood mode its packed candidates (every
        token of a candidate but its last)."""
        _, suffix, items = row
        packed = sum(len(c) - 1 for c in items) if self.mode == "likelihood" else 0
        return len(suffix) + packed

    def _prefix_rows(self, prefixes: Sequence[tuple]):
        """A KV cache whose row b holds ``prefixes[b]`` (right-padded to the longest) and the logits at
        each row's last prefix token (B, V).

        One distinct prefix: its kept cache (``_prefix``), repeated. Several: the tokens they all start
        with (the instruction) come from a kept cache too, and ONE padded forward continues it with the
        rest of the distinct prefixes, each encoded once (users who share a demonstration set share its
        row); these are not kept.
        """
        distinct = {prefix: k for k, prefix in enumerate(dict.fromkeys(prefixes))}
        if len(distinct) == 1:
            cache, last = self._prefix(prefixes[0])
            return self.lm.expand(cache, len(prefixes)), last.expand(len(prefixes), -1)
        start = common_start(list(distinct))
        base = self.lm.expand(self._prefix(start)[0], len(distinct)) if start else None
        rests = [prefix[len(start):] for prefix in distinct]
        cache, last = self.lm.prefill(rests, pad=self._pad_id, cache=base)
        self.counts.add_forward([len(rest) for rest in rests])
        rows = [distinct[prefix] for prefix in prefixes]
        return self.lm.select(cache, rows), last[rows]

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        return pad or 0

    def _batch_forward(self, rows: Sequence[Tuple[tuple, List[int], List[int], torch.Tensor]],
                       needed: Sequence[Sequence[int]]):
        """ONE forward of right-padded rows, each on its own prefix's KV cache (``_prefix_rows``).

        ``rows[b] = (prefix, ids, positions, allowed)``: the row's prefix ids, its tokens, their positions
        and a boolean (len, len(prefix) + len) mask of what each may attend to, its prefix then its own
        tokens; ``needed[b]`` the row positions whose logits are read, where -1 is the prefix's last token
        (the first prediction of a row with no suffix). Returns float logits (B, K, V) at the union of the
        needed positions and a map from row position to its index in K.

        In the batch cache row b's prefix is padded to the longest prefix, ``span``; its own tokens come
        after the span. Nothing attends to a pad of either kind, and padded tokens attend to their prefix
        only (no empty softmax row).
        """
        cache, last = self._prefix_rows([prefix for prefix, _, _, _ in rows])
        span, width = max(len(prefix) for prefix, _, _, _ in rows), max(len(ids) for _, ids, _, _ in rows)
        keep = sorted({pos for row in needed for pos in row if pos >= 0})
        logits = torch.empty((len(rows), 0, last.shape[-1]), device=last.device)
        if keep:
            ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
            positions = torch.zeros((len(rows), width), dtype=torch.long)
            allowed = torch.zeros((len(rows), width, span + width), dtype=torch.bool)
            for b, (prefix, row_ids, row_pos, row_allowed) in enumerate(rows):
                p, n = len(prefix), len(row_ids)
                ids[b, :n] = torch.as_tensor(row_ids, dtype=torch.long)
                positions[b, :n] = torch.as_tensor(row_pos, dtype=torch.long)
                positions[b, n:] = p
                allowed[b, :, :p] = True
                allowed[b, :n, :p] = row_allowed[:, :p]
                allowed[b, :n, span: span + n] = row_allowed[:, p:]
            logits, _ = self.lm.forward(ids, cache, positions=positions, allowed=allowed, keep=keep)
            self.counts.add_forward([len(row_ids) for _, row_ids, _, _ in rows])
        index = {pos: k for k, pos in enumerate(keep)}
        if any(-1 in row for row in needed):
            logits = torch.cat([logits, last.to(logits.device)[:, None]], 1)
            index[-1] = len(keep)
        return logits, index

    @staticmethod
    def _suffix_row(prefix: tuple, suffix: Sequence[int]):
        """A suffix alone as a batch row: causal after its prefix, positions continuing it."""
        p, n = len(prefix), len(suffix)
        allowed = torch.cat([torch.ones((n, p), dtype=torch.bool), torch.ones((n, n), dtype=torch.bool).tril()], 1)
        return prefix, list(suffix), list(range(p, p + n)), allowed

    def _batch_verbalizer(self, rows: Sequence[Tuple[tuple, List[int], List[str]]]) -> List[np.ndarray]:
        """Label logits after each row's suffix, for ``(prefix, suffix, labels)`` rows."""
        logits, index = self._batch_forward([self._suffix_row(prefix, s) for prefix, s, _ in rows],
                                            [[len(s) - 1] for _, s, _ in rows])
        return [logits[b, index[len(s) - 1], self.label_token_ids(labels)].double().cpu().numpy()
                for b, (_, s, labels) in enumerate(rows)]

    def _batch_likelihood(self, rows: Sequence[Tuple[tuple, List[int], List[List[int]]]]) -> List[np.ndarray]:
        """Likelihood scores of ``(prefix, suffix, candidates)`` rows: each row is the suffix and then its
        candidates packed as ``pack_candidates`` lays them (each sees the prefix, the whole suffix and its
        own earlier tokens; positions restart after the suffix). A candidate's token log-probs, in float64
        and in its token order, go to ``title_logprob``, once per reduction: (candidates, reductions) a row."""
        batch, needed, sources = [], [], []
        for prefix, suffix, cands in rows:
            p, n = len(prefix), len(suffix)
            _, s_ids, s_pos, s_allowed = self._suffix_row(prefix, suffix)
            c_ids, c_pos, c_allowed, source = pack_candidates(cands, p + n)  # c_allowed: (m, p + n + m)
            m = len(c_ids)
            allowed = torch.zeros((n + m, p + n + m), dtype=torch.bool)
            allowed[:n, : p + n] = s_allowed
            allowed[n:] = c_allowed
            batch.append((prefix, s_ids + c_ids.tolist(), s_pos + c_pos.tolist(), allowed))
            needed.append([n - 1] + [n + pos for _, pos, _ in source])
            sources.append(source)
        logits, index = self._batch_forward(batch, needed)
        starts = np.cumsum([0] + [len(cands) for _, _, cands in rows])  # row b's candidates in the flat list
        # every (row, kept position, token) read, and its slot: (flat candidate, index of the token in it)
        picked_b, picked_k, picked_t, slot = [], [], [], []
        for b, ((_, suffix, cands), source) in enumerate(zip(rows, sources)):
            n = len(suffix)
            for c, cand in enumerate(cands):  # log p(first token | prompt), after the suffix's last token
                picked_b.append(b), picked_k.append(index[n - 1]), picked_t.append(cand[0])
                slot.append((starts[b] + c, 0))
            read = [1] * len(cands)  # the source triples of a candidate come in its token order
            for (c, pos, token) in source:
                picked_b.append(b), picked_k.append(index[n + pos]), picked_t.append(token)
                slot.append((starts[b] + c, read[c]))
                read[c] += 1
        bi, ki = torch.tensor(picked_b, device=logits.device), torch.tensor(picked_k, device=logits.device)
        lse = torch.logsumexp(logits, -1)  # (B, K): the softmax's normaliser only where read
        logprobs = (logits[bi, ki, torch.tensor(picked_t, device=logits.device)] - lse[bi, ki]).double().cpu()
        longest = max((len(c) for _, _, cands in rows for c in cands), default=1)
        token_logprobs = torch.zeros((int(starts[-1]), longest), dtype=torch.float64)
        mask = torch.zeros_like(token_logprobs)
        ci, ti = torch.tensor(slot, dtype=torch.long).reshape(-1, 2).unbind(1)
        token_logprobs[ci, ti], mask[ci, ti] = logprobs, 1.0
        scores = np.stack([title_logprob(token_logprobs, mask, how, tokens).numpy()
                           for how, tokens in self.reductions], axis=1)  # (candidates, reductions)
        return np.split(scores, starts[1:-1])


def common_start(sequences: Sequence[Sequence[int]]) -> tuple:
    """The longest start all ``sequences`` share, leaving each at least one token of its own."""
    most = min(len(seq) for seq in sequences) - 1
    first = sequences[0]
    n = 0
    while n < most and all(seq[n] == first[n] for seq in sequences):
        n += 1
    return tuple(first[:n])


def pack_candidates(candidates: Sequence[Sequence[int]], prefix_len: int
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[Tuple[int, int, int]]]:
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

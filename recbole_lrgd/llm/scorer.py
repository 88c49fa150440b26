"""The one scorer: a score per candidate for a rendered prompt.

``likelihood``: length-normalised log-likelihood of each candidate's title after the prompt. The
prompt is run once; its KV cache is copied for a batch of candidates.
``verbalizer``: candidates are labelled A, B, C...; one forward pass; the score of a candidate is
the logit of its label's token.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import List, Sequence

import numpy as np
import torch

from recbole_lrgd.llm.prompt import Prompt, encode_parts

SCORER_MODES = ("likelihood", "verbalizer")


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


class LLMScorer:
    """Scores candidates for prompts; one instance per (model, mode)."""

    PREFIX_CACHE_SIZE = 4  # prefixes kept: the global demonstration set's and the zero-shot one, at least

    def __init__(self, model, tokenizer, mode: str = "likelihood", candidate_batch_size: int = 32):
        if mode not in SCORER_MODES:
            raise ValueError(f"scorer_mode {mode!r}: use one of {', '.join(SCORER_MODES)}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.candidate_batch_size = max(1, int(candidate_batch_size))
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
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
        last, cache = self._context(prefix_ids, suffix_ids)
        try:
            if self.mode == "verbalizer":
                shown_scores = last[self.label_token_ids(prompt.labels)].double().cpu().numpy()
            else:
                cands = [self.candidate_ids(prompt.candidates[i]) for i in prompt.order]
                shown_scores = self.likelihood(last, cache, len(prefix_ids) + len(suffix_ids), cands)
        finally:
            crop_to(cache, len(prefix_ids))  # the shared prefix's cache is left as it was found
        scores = np.empty(len(prompt.order), dtype=np.float64)
        scores[prompt.order] = shown_scores
        return scores

    def _context(self, prefix_ids: Sequence[int], suffix_ids: Sequence[int]):
        """Last-position logits and KV cache of prefix + suffix; the prefix is encoded once per run."""
        key = tuple(prefix_ids)
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
        else:
            logits, cache = self._forward(torch.tensor([list(prefix_ids)]), last_only=True)
            self._prefixes[key] = (cache, logits[0, -1])
            while len(self._prefixes) > self.PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        cache, last = self._prefixes[key]
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

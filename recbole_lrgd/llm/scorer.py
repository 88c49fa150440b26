"""The one scorer: a score per candidate for a rendered prompt.

``likelihood``: length-normalised log-likelihood of each candidate's title after the prompt. The
prompt is run once; its KV cache is copied for a batch of candidates.
``verbalizer``: candidates are labelled A, B, C...; one forward pass; the score of a candidate is
the logit of its label's token.
"""
from __future__ import annotations

import copy
import inspect
from typing import List, Sequence

import numpy as np
import torch

from recbole_lrgd.llm.prompt import Prompt, encode_prompt

SCORER_MODES = ("likelihood", "verbalizer")


def mean_token_logprob(logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of ``targets`` (n, m) under ``logprobs`` (n, m, V), ignoring masked pads."""
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple:
    """Right-pad token lists; causal attention means pads after a sequence never change it."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width))
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1.0
    return ids, mask


class LLMScorer:
    """Scores candidates for prompts; one instance per (model, mode)."""

    def __init__(self, model, tokenizer, mode: str = "likelihood", candidate_batch_size: int = 32):
        if mode not in SCORER_MODES:
            raise ValueError(f"scorer_mode {mode!r}: use one of {', '.join(SCORER_MODES)}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.candidate_batch_size = max(1, int(candidate_batch_size))
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def candidate_ids(self, title: str) -> List[int]:
        ids = self.tokenizer(title, add_special_tokens=False).input_ids
        return ids or [self.tokenizer.eos_token_id]

    def _forward(self, ids: torch.Tensor, cache=None):
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        out = self.model(input_ids=ids.to(self.device), use_cache=True, **kwargs)
        return out.logits.float(), getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    @torch.no_grad()
    def score(self, prompt: Prompt) -> np.ndarray:
        """Scores in the caller's candidate order (not the shown order)."""
        prompt_ids = encode_prompt(self.tokenizer, prompt.text)
        if self.mode == "verbalizer":
            shown_scores = self._verbalizer(prompt_ids, prompt.labels)
        else:
            shown_scores = self.likelihood(prompt_ids, [self.candidate_ids(prompt.candidates[i]) for i in prompt.order])
        scores = np.empty(len(prompt.order), dtype=np.float64)
        scores[prompt.order] = shown_scores
        return scores

    def likelihood(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """Run the prompt once, then each batch of candidates on a copy of its KV cache."""
        logits, cache = self._forward(torch.tensor([list(prompt_ids)]))
        first = torch.log_softmax(logits[0, -1], -1)
        out = []
        for start in range(0, len(candidates), self.candidate_batch_size):
            chunk = candidates[start: start + self.candidate_batch_size]
            ids, mask = pad_right(chunk, self.tokenizer.pad_token_id or 0)
            chunk_cache = copy.deepcopy(cache)
            chunk_cache.batch_repeat_interleave(len(chunk))
            later, _ = self._forward(ids[:, :-1], chunk_cache) if ids.shape[1] > 1 else (None, None)
            logprobs = first.expand(len(chunk), 1, -1)
            if later is not None:
                logprobs = torch.cat([logprobs, torch.log_softmax(later, -1)], 1)
            out.append(mean_token_logprob(logprobs, ids.to(logprobs.device), mask.to(logprobs.device)).cpu())
        return torch.cat(out).double().numpy()

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

    def _verbalizer(self, prompt_ids: Sequence[int], labels: Sequence[str]) -> np.ndarray:
        logits, _ = self._forward(torch.tensor([list(prompt_ids)]))
        return logits[0, -1, self.label_token_ids(labels)].double().cpu().numpy()

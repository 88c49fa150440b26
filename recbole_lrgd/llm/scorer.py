"""The one scorer: a score per candidate for a rendered prompt.

``likelihood``: length-normalised log-likelihood of each candidate's title after the prompt. The
prompt is run once; its KV cache is copied for a batch of candidates.
``verbalizer``: candidates are labelled A, B, C...; one forward pass; the score of a candidate is
the logit of its label's token.
"""
from __future__ import annotations

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


def crop_to(cache, length: int, added: int) -> None:
    """Drop the ``added`` tokens after the first ``length``: transformers 5 counts tokens to remove."""
    if "tokens_to_remove" in inspect.signature(cache.crop).parameters:
        cache.crop(-added)
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

    def __init__(self, model, tokenizer, mode: str = "likelihood", candidate_batch_size: int = 32):
        if mode not in SCORER_MODES:
            raise ValueError(f"scorer_mode {mode!r}: use one of {', '.join(SCORER_MODES)}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.candidate_batch_size = max(1, int(candidate_batch_size))
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

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
        prompt_ids = encode_prompt(self.tokenizer, prompt.text)
        if self.mode == "verbalizer":
            shown_scores = self._verbalizer(prompt_ids, prompt.labels)
        else:
            shown_scores = self.likelihood(prompt_ids, [self.candidate_ids(prompt.candidates[i]) for i in prompt.order])
        scores = np.empty(len(prompt.order), dtype=np.float64)
        scores[prompt.order] = shown_scores
        return scores

    def likelihood(self, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """Run the prompt once; then score a chunk of candidates in ONE packed sequence on its cache.

        Packing (each candidate sees the prompt and its own tokens, positions restart after the
        prompt) avoids copying the prompt's KV cache once per candidate.
        """
        logits, cache = self._forward(torch.tensor([list(prompt_ids)]), last_only=True)
        first = torch.log_softmax(logits[0, -1], -1)
        prefix = len(prompt_ids)
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
                crop_to(cache, prefix, added=len(ids))
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

    def _verbalizer(self, prompt_ids: Sequence[int], labels: Sequence[str]) -> np.ndarray:
        logits, _ = self._forward(torch.tensor([list(prompt_ids)]), last_only=True)
        return logits[0, -1, self.label_token_ids(labels)].double().cpu().numpy()

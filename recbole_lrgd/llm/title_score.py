"""A candidate title's score from its tokens' log-probs (``title_score``: their mean, their sum, or the mean of the
first few), the one reduction of the batched path (``llm/scorer.py``) and of ``naive_likelihood``, the slow
reference that path is tested and benchmarked against."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from recbole_lrgd.settings import TITLE_SCORES

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def check_title_score(how: str, first_tokens: Optional[int]) -> None:
    """``how`` is a ``TITLE_SCORES`` reduction, and ``first`` has a token count to read."""
    if how not in TITLE_SCORES:
        raise ValueError(f"title_score {how!r}: use one of {', '.join(TITLE_SCORES)}")
    if how == "first" and (first_tokens is None or first_tokens < 1):
        raise ValueError(f"title_score first reads title_score_tokens >= 1 tokens, not {first_tokens!r}")


def reduction_settings(how: str, first_tokens: Optional[int]) -> tuple:
    """A reduction's settings in the score-cache digest: none for the mean (the default keeps the shortest
    digest), its name otherwise, with its token count for ``first``."""
    if how == "mean":
        return ()
    return (how, first_tokens) if how == "first" else (how,)


def title_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor, how: str,
                  first_tokens: Optional[int] = None) -> torch.Tensor:
    """Each title's score (n,) from its tokens' log-probs (n, m), pads masked out (``mask`` 0).

    ``mean``: their mean; ``sum``: their total; ``first``: the mean of the first ``first_tokens`` unmasked
    ones (all of a shorter title). The total is a running sum along the tokens (``cumsum``, sequential on a
    CPU), so a float64 title's score does not depend on how many pads its batch gave it.
    """
    check_title_score(how, first_tokens)
    read = mask
    if how == "first":
        read = mask * (mask.cumsum(-1) <= first_tokens)
    total = (token_logprobs * read).cumsum(-1)[..., -1]
    return total if how == "sum" else total / read.sum(-1).clamp(min=1)


def target_logprobs(logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The log-probs (n, m) of ``targets`` (n, m) under next-token ``logprobs`` (n, m, V)."""
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def mean_token_logprob(logprobs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of ``targets`` (n, m) under ``logprobs`` (n, m, V), ignoring masked pads."""
    return title_logprob(target_logprobs(logprobs, targets), mask, "mean")


# -- the reference the batched path is tested and benchmarked against ----------------------------
@torch.inference_mode()
def naive_likelihood(model: PreTrainedModel, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]],
                     how: str = "mean", first_tokens: Optional[int] = None) -> np.ndarray:
    """Reference likelihood scores: the full prompt + one candidate per forward pass, no KV cache (slow);
    ``how`` and ``first_tokens`` as in ``title_logprob``."""
    out = []
    device = next(model.parameters()).device
    for cand in candidates:
        ids = torch.tensor([list(prompt_ids) + list(cand)], device=device)
        logits = model(input_ids=ids).logits.float()
        logprobs = torch.log_softmax(logits[:, len(prompt_ids) - 1: -1], -1)
        picked = target_logprobs(logprobs, torch.tensor([list(cand)], device=logprobs.device))
        out.append(title_logprob(picked, torch.ones_like(picked), how, first_tokens).item())
    return np.array(out, dtype=np.float64)

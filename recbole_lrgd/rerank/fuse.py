"""LRGD's scores of sampled candidates fused with a collaborative model's (``prior_model``, ``prior_weight``).

Per user, over its candidates, (1 - w) z(LLM) + w z(prior): ``blend.blended``, the blend of ``rerank_blend``.
The prior scores LRGD's own evaluation rows with its RecBole ``predict``, as RecBole scores its sampled
candidates, so at w = 1 the order is the prior's own row's. ``prior_weight: auto`` picks w from ``WEIGHT_GRID`` by
NDCG@10 on validation users (``choose_weight``), never on test users.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from recbole_lrgd.data.chunks import user_rows
from recbole_lrgd.evaluator.per_user import ndcg_of_rank
from recbole_lrgd.rerank.blend import blended

if TYPE_CHECKING:
    from recbole.data.interaction import Interaction


WEIGHT_GRID = tuple(k / 10 for k in range(11))
Block = Tuple[np.ndarray, np.ndarray, int]  # one user's (LLM scores, prior scores, index of the held-out item)


@dataclass(frozen=True)
class Fusion:
    """A trained RecBole model and the weight of its z-scores: a number in [0, 1], or ``auto`` until ``fit`` picks
    one (``with_weight``)."""

    prior: Any
    weight: Union[float, str]

    def with_weight(self, weight: float) -> "Fusion":
        return replace(self, weight=float(weight))

    @torch.no_grad()
    def prior_scores(self, interaction: Interaction) -> np.ndarray:
        """The prior's float64 score of each row (RecBole's ``predict``, on the prior's device)."""
        device = next(iter(self.prior.parameters()), torch.zeros(0)).device
        return self.prior.predict(interaction.to(device)).double().cpu().numpy()

    def fuse(self, users: np.ndarray, llm: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Each user's rows blended at ``weight`` (rows grouped by user, as RecBole's sampled batches are)."""
        fused = np.empty(len(llm), dtype=np.float64)
        for _, rows in user_rows(users):
            fused[rows] = blended(llm[rows], prior[rows], float(self.weight))
        return fused


def ndcg10(scores: np.ndarray, target: int) -> float:
    """NDCG@10 of one held-out item among a user's candidates; a tie counts as half a place above it."""
    above = float(np.sum(scores > scores[target])) + 0.5 * float(np.sum(scores == scores[target]) - 1)
    return ndcg_of_rank(above)


def choose_weight(blocks: Sequence[Block], grid: Sequence[float] = WEIGHT_GRID) -> Tuple[float, Dict[float, float]]:
    """The weight of ``grid`` with the best mean NDCG@10 over ``blocks`` (the lowest of tied ones: the LLM's side),
    and every weight's mean."""
    means = {w: float(np.mean([ndcg10(blended(llm, prior, w), t) for llm, prior, t in blocks])) for w in grid}
    best = max(means.values())
    return min(w for w, m in means.items() if m == best), means


def user_blocks(users: np.ndarray, llm: np.ndarray, prior: np.ndarray, labels: np.ndarray) -> List[Block]:
    """A batch's rows as ``Block``s, one per user (its held-out item: the row labelled positive)."""
    return [(llm[rows], prior[rows], int(np.flatnonzero(labels[rows] > 0)[0])) for _, rows in user_rows(users)]

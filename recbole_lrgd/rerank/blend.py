"""The re-ranking math of ``candidate_source``: each user's top-N candidates from the retriever's scores, the
z-score blend of the LLM's and the retriever's scores over them, and the full-catalogue row RecBole's collector
ranks (``reranked_row``). ``blended`` is the one per-user z-score blend of an LLM's scores with another model's,
for re-ranking and for fusion on sampled candidates (``rerank/fuse.py``) alike."""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from recbole.evaluator.register import metric_information


def top_candidates(scores: torch.Tensor, n: int) -> List[np.ndarray]:
    """Each row's ``n`` highest-scored items, best first (``torch.topk``, the op RecBole's collector ranks
    with), without the -inf ones (padding, history): fewer than ``n`` where fewer are left."""
    values, items = torch.topk(scores, min(n, scores.shape[1]), dim=1)
    return [row_items[torch.isfinite(row_values)].numpy() for row_values, row_items in zip(values, items)]


def standardised(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over one user's candidates; zeros where they all tie."""
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def blended(llm: np.ndarray, other: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) z(llm) + weight z(other) over one user's candidates (z: ``standardised``), in float64."""
    return (1 - weight) * standardised(np.asarray(llm, dtype=np.float64)) \
        + weight * standardised(np.asarray(other, dtype=np.float64))


POSITIONAL_NEEDS = {"rec.topk", "rec.meanrank"}  # RecBole's metric_need of metrics that read where the positives rank


def misses_need_no_llm(metrics: List[str], topk: List[int], top_n: int) -> bool:
    """Whether a user whose held-out item is not among its N re-ranked candidates has the same metrics whatever
    order the LLM gives the N: every metric reads only where that item ranks (RecBole's ``metric_need``; an
    unknown metric does not), which is below all N either way, and a top-k metric looks no deeper than N (below
    N, ties among the retriever's scores are broken by ``torch.topk``, which the N's values can sway)."""
    needs = set().union(*(metric_information.get(m.lower(), ["unknown"]) for m in metrics))
    return needs <= POSITIONAL_NEEDS and ("rec.topk" not in needs or max(topk) <= top_n)


def _dense_ranks(values: torch.Tensor) -> torch.Tensor:
    """1 for the lowest value, 2 for the next distinct one...: equal values get equal ranks."""
    return torch.unique(values, sorted=True, return_inverse=True)[1].to(torch.float32) + 1


def reranked_row(retrieved: torch.Tensor, candidates: np.ndarray, llm: np.ndarray, blend: float) -> torch.Tensor:
    """One user's row of the full score matrix: the ``candidates`` above every other item, ordered by
    (1 - blend) z(llm) + blend z(retriever) (z: ``standardised`` over the candidates); every other finite item
    below them in the retriever's order; -inf where the retriever has -inf (padding, history).

    The values are dense ranks (equal scores stay equal), exact in float32: where the combined order is the
    retriever's, the row compares every pair of items as the retriever's own row does, ties included (but
    for a tie across the top-N boundary), so RecBole's top-k picks the same items from both."""
    row = torch.full(retrieved.shape, -np.inf, dtype=torch.float32)
    chosen = torch.from_numpy(candidates.astype(np.int64))
    rest = torch.isfinite(retrieved)
    rest[chosen] = False
    below = _dense_ranks(retrieved[rest])
    row[rest] = below
    if len(candidates):
        combined = blended(llm, retrieved[chosen].double().numpy(), blend)
        row[chosen] = (below.max() if len(below) else 0) + _dense_ranks(torch.from_numpy(combined))
    return row

"""Per-user NDCG of one held-out item and a paired bootstrap, for comparing two models on the same users.

A run's per-user metrics come from RecBole's own evaluation (``run(...).test_per_user``, kept by
``evaluator.collector.PerUserCollector``), so no model is scored a second time.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def ndcg_of_rank(rank: float, k: int = 10) -> float:
    """NDCG@k of one held-out item from its 0-based rank: 1 / log2(rank + 2) inside the top k, else 0."""
    return float(1.0 / np.log2(rank + 2)) if rank < k else 0.0


def ndcg_at(ranks: Dict[int, int], k: int = 10) -> Dict[int, float]:
    """NDCG@k of one held-out item per user from its 0-based rank."""
    return {u: ndcg_of_rank(r, k) for u, r in ranks.items()}


def paired_bootstrap(a: Dict[int, float], b: Dict[int, float], n_boot: int = 10000, seed: int = 0,
                     alpha: float = 0.05) -> Tuple[float, float, float, float]:
    """Mean of a - b over the users both have, its (1 - alpha) percentile bootstrap interval
    (users resampled with replacement), and the share of resamples where a - b <= 0."""
    users = sorted(set(a) & set(b))
    diff = np.array([a[u] - b[u] for u in users], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(lo), float(hi), float((means <= 0).mean())

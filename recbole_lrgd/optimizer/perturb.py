"""Perturbations of demonstrations: noise on the dual model's training data (docs/theory.md).

A demonstration here is ``(history item ids, target item id)``; all functions are pure and seeded.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from recbole_lrgd.data.demonstrations import DemoItems


def perturb_history(history: Sequence[int], rate: float, items: np.ndarray, rng: np.random.Generator) -> Tuple[int, ...]:
    """Each item, with probability ``rate``, is dropped, replaced by a random item of ``items``, or moved
    one place later (equal odds). At least one item is always kept."""
    out = list(int(i) for i in history)
    k = 0
    while k < len(out):
        if rng.random() < rate:
            action = int(rng.integers(3))
            if action == 0 and len(out) > 1:
                del out[k]
                continue
            if action == 1 and len(items):
                out[k] = int(items[rng.integers(len(items))])
            elif action == 2 and k + 1 < len(out):
                out[k], out[k + 1] = out[k + 1], out[k]
                k += 1
        k += 1
    return tuple(out)


def perturb_demonstrations(demos: Sequence[DemoItems], rate: float, items: np.ndarray,
                           seed: Sequence[int]) -> List[DemoItems]:
    """One perturbed copy of a demonstration list: every history perturbed at ``rate``, and the
    demonstrations put in a random order. ``seed`` fixes the copy (same seed, same copy)."""
    rng = np.random.default_rng([int(s) for s in seed])
    perturbed = [(perturb_history(h, rate, items, rng), int(t)) for h, t in demos]
    return [perturbed[i] for i in rng.permutation(len(perturbed))]

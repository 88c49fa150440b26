"""Probe users: training users whose last training item is held out as a target.

Effect_D of a demonstration set is measured on probes, so choosing demonstrations never sees a
validation or test target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, List, Optional

import numpy as np

from recbole_lrgd.data.demonstrations import DemonstrationPool


@dataclass(frozen=True)
class Probe:
    """One probe user: their training history before the target, and candidates (target first)."""

    user: int
    history: np.ndarray
    candidates: np.ndarray


def make_probes(pool: DemonstrationPool, n_users: int, n_negatives: int, item_num: int, seed: int, *,
                max_his_len: int, items: Optional[np.ndarray] = None, exclude: Collection[int] = ()) -> List[Probe]:
    """A seeded sample of pool users (none of ``exclude``); negatives are items outside the user's training
    sequence, drawn from ``items`` when given (the optimizer passes the training items: nothing else is seen)."""
    skip = {int(u) for u in exclude}
    eligible = np.array([u for u in pool.users if len(pool.sequences[int(u)]) >= 3 and int(u) not in skip],
                        dtype=np.int64)
    rng = np.random.default_rng([int(seed), 7])
    chosen = np.sort(rng.choice(eligible, size=min(n_users, len(eligible)), replace=False))
    probes = []
    for user in chosen:
        seq = pool.sequences[int(user)]
        allowed = np.setdiff1d(np.arange(1, item_num) if items is None else items, seq)
        negatives = np.random.default_rng([int(seed), int(user)]).choice(allowed, size=n_negatives, replace=False)
        probes.append(Probe(int(user), seq[:-1][-max_his_len:], np.concatenate([[seq[-1]], negatives])))
    return probes

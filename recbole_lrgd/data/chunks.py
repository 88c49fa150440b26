"""RecBole's evaluation rows grouped by user, and the users in chunks: the unit LRGD scores and shards.

An evaluation batch (uniN/popN) holds each user's block of candidate rows. ``user_rows`` finds every
user's rows, users in order of first appearance; ``user_chunks`` cuts that list into chunks of ``size``
users. The model scores one chunk's prompts in one batch, and sharded evaluation deals whole chunks out
to the processes: every prompt is batched with the same others in any number of processes, so sharded
scores equal a single process's to the last bit.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

UserRows = Tuple[int, np.ndarray]  # (user id, indices of that user's rows, ascending)


def user_rows(users: Sequence[int]) -> List[UserRows]:
    """Every user of ``users`` (one id per row) with its rows, users in order of first appearance."""
    users = np.asarray(users)
    if not len(users):
        return []
    ids, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    by_user = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    return [(int(ids[k]), by_user[k]) for k in np.argsort(first, kind="stable")]


def user_chunks(users: Sequence[int], size: int) -> List[List[UserRows]]:
    """``user_rows(users)`` in consecutive chunks of ``size`` users (the last may be shorter)."""
    rows = user_rows(users)
    return [rows[start: start + size] for start in range(0, len(rows), size)]

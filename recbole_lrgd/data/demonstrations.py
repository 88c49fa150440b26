"""Demonstrations from training interactions only: another user's history and true next item."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import scipy.sparse as sp


def training_sequences(train_dataset) -> Dict[int, np.ndarray]:
    """Each user's training sequence (item ids, oldest first) from RecBole's augmented train rows."""
    feat = train_dataset.inter_feat
    uids = feat[train_dataset.uid_field].numpy()
    lists = feat[train_dataset.iid_field + train_dataset.config["LIST_SUFFIX"]].numpy()
    lengths = feat[train_dataset.config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    targets = feat[train_dataset.iid_field].numpy()
    longest: Dict[int, int] = {}
    for row, (uid, length) in enumerate(zip(uids, lengths)):
        if length >= lengths[longest.get(uid, row)]:
            longest[uid] = row
    return {int(uid): np.append(lists[row, : lengths[row]], targets[row]) for uid, row in sorted(longest.items())}


class DemonstrationPool:
    """Candidate demonstrations: per training user, (history without the last item, last item)."""

    def __init__(self, sequences: Dict[int, np.ndarray], n_items: int):
        self.users = np.array([u for u, s in sequences.items() if len(s) >= 2], dtype=np.int64)
        self.sequences = {int(u): sequences[int(u)] for u in self.users}
        rows = np.repeat(np.arange(len(self.users)), [len(self.sequences[int(u)]) for u in self.users])
        cols = np.concatenate([self.sequences[int(u)] for u in self.users]) if len(self.users) else np.array([], int)
        self.matrix = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(self.users), n_items))
        self.matrix.data[:] = 1.0  # a user who repeats an item counts it once

    def __len__(self) -> int:
        return len(self.users)

    def demonstration(self, user: int, max_len: int, cut: int = 0) -> tuple:
        """(history item ids, target item id) of one pool user; history cut to its last ``max_len``,
        then its ``cut`` oldest items removed (at least one item is always kept)."""
        seq = self.sequences[int(user)]
        history = seq[:-1][-max_len:]
        return history[min(int(cut), len(history) - 1):], int(seq[-1])

    def random_users(self, k: int, seed: int) -> List[int]:
        """A seeded random set of ``k`` pool users (the 'random demonstrations' baseline)."""
        k = min(k, len(self.users))
        return [int(u) for u in np.random.default_rng(seed).choice(self.users, size=k, replace=False)]

    def nearest_users(self, history: Sequence[int], k: int, exclude: int = -1,
                      among: Optional[Sequence[int]] = None) -> List[int]:
        """The ``k`` pool users (of ``among``, when given) whose training items overlap ``history``
        most (ties: lower user id)."""
        items = np.unique(np.asarray(history, dtype=np.int64))
        overlap = np.asarray(self.matrix[:, items].sum(axis=1)).ravel()
        overlap[self.users == exclude] = -1
        order = np.lexsort((self.users, -overlap))
        if among is not None:
            allowed = set(int(u) for u in among) - {int(exclude)}
            order = [o for o in order if int(self.users[o]) in allowed]
        return [int(self.users[o]) for o in order[:k]]

"""Demonstrations from training interactions only (another user's history and true next item), and
which of them each user sees.

A demonstration is named by a ``Spec``, ``(pool user, cut)``: that training user's history (its last
``max_his_len`` items before its last one, minus the ``cut`` oldest) and its last item. ``DemoChoice``
is the one place the ``demo_mode`` policies live: none, one global set (random, or lrgd's global
scope), each user's nearest pool users (nearest) or its nearest of an optimized library (lrgd's
per-user scope); ``DemoPolicy`` binds a choice to its pool and K, and answers "which demonstrations does
user u see" for the ranker, the probes, the optimizer and the study alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from recbole.data.dataset import Dataset


Spec = Tuple[int, int]  # (pool user, oldest shown history items cut)
DemoItems = Tuple[Tuple[int, ...], int]  # (history item ids, oldest first; target item id)


def training_sequences(train_dataset: Dataset) -> Dict[int, np.ndarray]:
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
    """Candidate demonstrations: per training user, (history without the last item, last item); a
    prompt shows at most ``max_his_len`` history items."""

    def __init__(self, sequences: Dict[int, np.ndarray], n_items: int, max_his_len: int):
        self.users = np.array([u for u, s in sequences.items() if len(s) >= 2], dtype=np.int64)
        self.sequences = {int(u): sequences[int(u)] for u in self.users}
        self.max_his_len = int(max_his_len)
        rows = np.repeat(np.arange(len(self.users)), [len(self.sequences[int(u)]) for u in self.users])
        cols = np.concatenate([self.sequences[int(u)] for u in self.users]) if len(self.users) else np.array([], int)
        self.matrix = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(self.users), n_items))
        self.matrix.data[:] = 1.0  # a user who repeats an item counts it once
        self.items = np.unique(cols)  # the training items: where a demonstration's others come from
        self._by_target: Dict[int, List[int]] = {}  # last item -> the pool users whose sequence ends with it
        for u in sorted(int(u) for u in self.users):
            self._by_target.setdefault(int(self.sequences[u][-1]), []).append(u)

    def __len__(self) -> int:
        return len(self.users)

    def demonstration(self, user: int, cut: int = 0) -> DemoItems:
        """The demonstration of pool user ``user``: its history cut to the last ``max_his_len`` items, then
        its ``cut`` oldest items removed (at least one item is always kept), and its target."""
        seq = self.sequences[int(user)]
        history = seq[:-1][-self.max_his_len:]
        return tuple(int(i) for i in history[min(int(cut), len(history) - 1):]), int(seq[-1])

    def owner(self, demo: DemoItems) -> Optional[int]:
        """The pool user whose demonstration this is (clean or cut): its target is that user's last item and its
        history ends that user's uncut history (lowest id on ties). None for a history no user shows, such as
        the optimizer's perturbed copies."""
        history, target = demo
        if not history:
            return None
        for user in self._by_target.get(int(target), ()):
            uncut = self.sequences[user][:-1][-self.max_his_len:]
            if len(history) <= len(uncut) and tuple(int(i) for i in uncut[-len(history):]) == tuple(history):
                return user
        return None

    def negatives(self, demo: DemoItems, n: int, seed: int) -> Tuple[int, ...]:
        """``n`` training items a demonstration shows as not chosen (fewer where there are not so many): items
        its user did not choose (for a perturbed copy with no exact owner: items it does not show), seeded by
        (seed, its items), so it shows the same others in every prompt."""
        history, target = demo
        user = self.owner(demo)
        chosen = self.sequences[user] if user is not None else [*history, target]
        outside = np.setdiff1d(self.items, chosen)
        rng = np.random.default_rng([int(seed), 19, int(target), *map(int, history)])
        return tuple(int(i) for i in rng.choice(outside, size=min(int(n), len(outside)), replace=False))

    def target_slot(self, demo: DemoItems, n: int, seed: int) -> int:
        """Where, among its ``n`` others, a demonstration's target is listed (0..n), seeded by (seed, its items)."""
        history, target = demo
        return int(np.random.default_rng([int(seed), 23, int(target), *map(int, history)]).integers(int(n) + 1))

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


@dataclass(frozen=True)
class DemoChoice:
    """Which demonstrations a user sees: every one of ``specs`` (a global set), or with ``per_user`` its
    ``k`` nearest of them, never itself (of the whole pool when ``specs`` is None). No specs: zero-shot."""

    specs: Optional[Tuple[Spec, ...]] = ()
    per_user: bool = False

    @classmethod
    def chosen(cls, specs: Sequence[Sequence[int]], per_user: bool) -> "DemoChoice":
        """The optimizer's choice: a global set, or a library each user retrieves its nearest from."""
        return cls(tuple((int(u), int(c)) for u, c in specs), per_user)

    @classmethod
    def for_mode(cls, demo_mode: str, pool: DemonstrationPool, k: int, seed: int) -> "DemoChoice":
        """The choice of ``demo_mode`` none, random (a seeded global set of ``k``) or nearest."""
        if demo_mode == "random":
            return cls(tuple((u, 0) for u in pool.random_users(k, seed)))
        return cls(None, per_user=True) if demo_mode == "nearest" else cls()

    @property
    def users(self) -> List[int]:
        return [u for u, _ in self.specs or ()]

    def for_user(self, pool: Optional[DemonstrationPool], user: int, history: Sequence[int], k: int) -> List[Spec]:
        """The demonstrations ``user`` (with this history) sees, in prompt order."""
        if not self.per_user:
            return list(self.specs)
        among = None if self.specs is None else self.users
        cuts = dict(self.specs or ())
        return [(u, cuts.get(u, 0)) for u in pool.nearest_users(history, k, exclude=user, among=among)]

    def __str__(self) -> str:
        if self.specs is None:
            return "per user (most item overlap)"
        if self.per_user:
            return f"per user, nearest of the library {self.users}"
        return f"global set of users {self.users}" if self.specs else "none (zero-shot)"


@dataclass(frozen=True)
class DemoPolicy:
    """A ``choice`` bound to its ``pool`` and ``k`` (the K a per-user choice retrieves)."""

    choice: DemoChoice
    pool: Optional[DemonstrationPool]
    k: int

    def specs(self, user: int, history: Sequence[int], probe: bool = False) -> List[Spec]:
        """The demonstrations ``user`` (with this history) sees, in prompt order. A ``probe`` (its last training
        item the target) never sees its own demonstration, which holds the answer."""
        specs = self.choice.for_user(self.pool, user, history, self.k)
        return [s for s in specs if s[0] != user] if probe else specs

    def demonstrations(self, user: int, history: Sequence[int], probe: bool = False) -> List[DemoItems]:
        """``specs`` as item ids."""
        return [self.pool.demonstration(*spec) for spec in self.specs(user, history, probe)]

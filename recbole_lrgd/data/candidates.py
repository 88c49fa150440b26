"""Candidate lists drawn once and replayed, so every model ranks exactly the same candidates.

RecBole samples negatives lazily, batch by batch, from the global NumPy RNG, and its sequential
models use a different sampler (repeatable) from its general ones: two models see the same
candidates only by luck. Here the negatives of every evaluated user are drawn once, from the data,
the seed and the user alone, and a dataloader replays them.
"""
from __future__ import annotations

import hashlib

from typing import TYPE_CHECKING, Dict, Optional

import numpy as np
import torch
from recbole.data.dataloader import NegSampleEvalDataLoader

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset
    from recbole.sampler.sampler import AbstractSampler


def sample_user_subset(uids: np.ndarray, n_users: Optional[int], seed: int) -> np.ndarray:
    """A seeded sample of ``n_users`` distinct users (all of them when ``n_users`` is None or too big)."""
    uids = np.unique(uids)
    if not n_users or n_users >= len(uids):
        return uids
    return np.sort(np.random.default_rng(seed).choice(uids, size=int(n_users), replace=False))


def user_items(dataset: Dataset) -> Dict[int, np.ndarray]:
    """Every item each user interacted with, in any split: never offered as a negative."""
    uids = np.asarray(dataset.inter_feat[dataset.uid_field])  # a DataFrame before build(), tensors after
    iids = np.asarray(dataset.inter_feat[dataset.iid_field])
    order = np.argsort(uids, kind="stable")
    bounds = np.flatnonzero(np.diff(uids[order])) + 1
    return {int(uids[group[0]]): np.unique(iids[group]) for group in np.split(order, bounds) if len(group)}


def item_distribution(item_ids: np.ndarray, item_num: int, distribution: str, alpha: float = 1.0) -> np.ndarray:
    """Sampling probabilities over item ids 1..n-1 from all interactions: uniform, or popularity ** alpha."""
    if distribution == "uniform":
        weights = np.ones(item_num)
    elif distribution == "popularity":
        weights = np.bincount(item_ids, minlength=item_num)
        weights = weights.astype(np.float64) ** float(alpha)
    else:
        raise ValueError(f"unknown negative distribution {distribution!r}")
    weights[0] = 0.0  # id 0 is RecBole's padding item
    return weights / weights.sum()


def draw_negatives(used: Dict[int, np.ndarray], probs: np.ndarray, eval_dataset: Dataset, num: int,
                   seed: int) -> Dict[int, np.ndarray]:
    """Per evaluated user, a (rows, num) array of distinct negatives the user never interacted with.

    ``used`` and ``probs`` come from ``user_items`` and ``item_distribution`` on the dataset
    *before* ``build()`` (a sequential build keeps only targets in ``inter_feat``). Unlike RecBole's
    samplers (which differ between general and sequential models), the draw depends only on the
    data, the seed and the user, so every model gets the same candidates.
    """
    uids = eval_dataset.inter_feat[eval_dataset.uid_field].numpy()
    table: Dict[int, np.ndarray] = {}
    for uid in np.unique(uids):
        allowed = probs.copy()
        allowed[used.get(int(uid), [])] = 0.0
        n_rows = int((uids == uid).sum())
        if np.count_nonzero(allowed) < num:
            raise ValueError(f"user {uid} has fewer than {num} items left to sample as negatives")
        rng = np.random.default_rng([int(seed), int(uid)])
        table[int(uid)] = np.stack([rng.choice(len(allowed), size=num, replace=False, p=allowed / allowed.sum())
                                    for _ in range(n_rows)])
    return table


class FixedCandidateEvalDataLoader(NegSampleEvalDataLoader):
    """RecBole's uniN/popN evaluation loader, with negatives replayed from a fixed table."""

    def __init__(self, config: Config, dataset: Dataset, sampler: AbstractSampler, negatives: Dict[int, np.ndarray],
                 shuffle: bool = False):
        self.negatives = negatives
        super().__init__(config, dataset, sampler, shuffle=shuffle)

    def _neg_sampling(self, inter_feat):
        uids = inter_feat[self.uid_field].numpy()
        rows: Dict[int, int] = {}
        negs = []
        for uid in uids:  # the k-th row of a user in this block takes that user's k-th stored row
            k = rows.get(int(uid), 0)
            rows[int(uid)] = k + 1
            negs.append(self.negatives[int(uid)][k])
        flat = torch.from_numpy(np.stack(negs).T.reshape(-1).astype(np.int64))
        return self.sampling_func(inter_feat, flat)

    def candidate_sets(self) -> Dict[int, np.ndarray]:
        """user id -> the positive(s) and negatives this loader shows, for equality checks."""
        out = {}
        uids = self._dataset.inter_feat[self.uid_field].numpy()
        iids = self._dataset.inter_feat[self.iid_field].numpy()
        for uid in np.unique(uids):
            out[int(uid)] = np.concatenate([iids[uids == uid], self.negatives[int(uid)].reshape(-1)])
        return out


def read_candidates_file(path: str, user_token2id: Dict[str, int], item_token2id: Dict[str, int],
                         targets: Dict[int, int], num_neg: int) -> Dict[int, np.ndarray]:
    """Fixed candidate lists in LLMRank's format: ``user_id<TAB>item item item ...`` (raw tokens).

    As LLMRank does: the user's target is removed from the line where present, the first
    ``num_neg`` remaining ids are the negatives (the target is added back by the loader). Returns
    internal user id -> a (1, num_neg) array of internal item ids, in file order. ``targets`` maps
    internal user id -> the internal id of that user's held-out item; a user of the file who is not
    among them (unknown, filtered out, or without a test item) is an error, never skipped. Any bad
    line stops with an ``LRGDError`` naming the file and the first bad line.
    """
    from recbole_lrgd.errors import LRGDError

    table: Dict[int, np.ndarray] = {}
    seen: Dict[int, int] = {}
    try:
        f = open(path, encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not part of the first id
    except OSError as exc:
        raise LRGDError(f"candidates_file {path}: cannot read it ({exc.strerror})") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue

            def bad(why: str) -> LRGDError:
                return LRGDError(f"candidates_file {path} line {lineno}: {why}")

            if "\t" not in line:
                raise bad("expected user_id, a tab, then space-separated item ids")
            user, items = line.split("\t", 1)
            user, tokens = user.strip(), items.split()
            if user not in user_token2id or user_token2id[user] == 0:
                raise bad(f"user {user!r} is not in the dataset (after filtering)")
            uid = user_token2id[user]
            if uid not in targets:
                raise bad(f"user {user!r} has no held-out test item (not a test user)")
            if uid in seen:
                raise bad(f"user {user!r} already has candidates on line {seen[uid]}")
            missing = [t for t in tokens if item_token2id.get(t, 0) == 0]
            if missing:
                raise bad(f"item {missing[0]!r} is not in the dataset (after filtering)")
            iids = [item_token2id[t] for t in tokens]
            if len(set(iids)) != len(iids):
                dup = next(t for k, t in enumerate(tokens) if iids[k] in iids[:k])
                raise bad(f"item {dup!r} is listed twice")
            negatives = [i for i in iids if i != targets[uid]][:num_neg]
            if len(negatives) < num_neg:
                raise bad(f"{len(negatives)} candidates besides the target, {num_neg} needed "
                          f"(eval mode sample_num)")
            seen[uid] = lineno
            table[uid] = np.asarray([negatives], dtype=np.int64)
    if not table:
        raise LRGDError(f"candidates_file {path} holds no candidate lines")
    return table


def interacted_negatives(negatives: Dict[int, np.ndarray], seen: Dict[int, np.ndarray]) -> Dict[int, int]:
    """Per user, how many of its negatives (``read_candidates_file``'s table) are items it interacted with
    (``seen``: ``user_items``), which its metrics then count as wrong answers; users with none are left out."""
    counts = {}
    for uid, negs in negatives.items():
        n = int(np.isin(negs, seen.get(uid, ())).sum())
        if n:
            counts[uid] = n
    return counts


def candidates_digest(loader: AbstractDataLoader) -> str:
    """A short hash of every evaluated user's candidate set (equal across runs = the same candidates); "" for a
    loader without fixed candidates (a full ranking)."""
    sets = loader.candidate_sets() if hasattr(loader, "candidate_sets") else {}
    h = hashlib.sha256()
    for uid in sorted(sets):
        h.update(np.asarray([uid, *np.sort(sets[uid])], dtype=np.int64).tobytes())
    return h.hexdigest()[:8] if sets else ""

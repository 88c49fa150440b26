"""Slices of the test users, to read a model's metrics where collaborative data is thin (``slices: True``).

Two families, each user in one slice of each: ``history``, by the user's number of training interactions, in
three buckets cut at the evaluated users' terciles; ``popularity``, by the held-out item's number of training
interactions: cold (at most ``COLD_MAX``), head (the most popular items that together hold ``HEAD_SHARE`` of the
training interactions, ties included) and middle. Both are read from the training split every model shares, so
the slices are the same for LRGD and RecBole's baselines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.evaluator.per_user import paired_bootstrap

if TYPE_CHECKING:
    from recbole.data.dataset import Dataset


COLD_MAX = 5
HEAD_SHARE = 0.2


@dataclass(frozen=True)
class Slices:
    """Each family's slice names in order and each test user's slice (user id -> name)."""

    order: Dict[str, Tuple[str, ...]]
    labels: Dict[str, Dict[int, str]]

    def users(self, family: str, name: str) -> List[int]:
        return [u for u, label in self.labels[family].items() if label == name]


def training_counts(train_dataset: Dataset) -> Tuple[np.ndarray, np.ndarray]:
    """Training interactions per user id and per item id, from a train loader's dataset: RecBole's interactions,
    or a sequential model's augmented rows (one per training item after a user's first, whose row of history
    length 1 names that first item)."""
    feat, config = train_dataset.inter_feat, train_dataset.config
    users = feat[train_dataset.uid_field].numpy()
    items = feat[train_dataset.iid_field].numpy()
    history_field = train_dataset.iid_field + config["LIST_SUFFIX"]
    if history_field in feat:
        first = feat[config["ITEM_LIST_LENGTH_FIELD"]].numpy() == 1
        users = np.concatenate([users, users[first]])
        items = np.concatenate([items, feat[history_field][first, 0].numpy()])
    return (np.bincount(users, minlength=train_dataset.user_num),
            np.bincount(items, minlength=train_dataset.item_num))


def held_out_items(test_dataset: Dataset) -> Dict[int, int]:
    """Each test user's held-out item (one per user: leave-one-out)."""
    feat = test_dataset.inter_feat
    users = feat[test_dataset.uid_field].numpy()
    if len(np.unique(users)) != len(users):
        raise LRGDError("slices read one held-out test item per user (leave-one-out: eval_args split "
                        "{'LS': 'valid_and_test'})")
    return dict(zip(users.tolist(), feat[test_dataset.iid_field].numpy().tolist()))


def _history_slices(counts: Mapping[int, int]) -> Tuple[Tuple[str, ...], Dict[int, str]]:
    """Three buckets of training-history length, cut at the users' terciles (counts of users; fewer buckets where
    the terciles tie or reach the longest history)."""
    values = np.array(list(counts.values()))
    cuts = sorted({int(np.quantile(values, q, method="lower")) for q in (1 / 3, 2 / 3)} - {int(values.max())})
    edges = [int(values.min()) - 1, *cuts, int(values.max())]
    names = [f"{a + 1}-{b}" if b > a + 1 else f"{b}" for a, b in zip(edges, edges[1:])]
    names[-1] = f"{edges[-2] + 1}+"
    labels = {u: names[int(np.searchsorted(cuts, c, side="left"))] for u, c in counts.items()}
    return tuple(names), labels


def head_threshold(item_counts: np.ndarray, share: float = HEAD_SHARE) -> int:
    """The fewest training interactions of a head item: the most popular items, taken until they hold ``share``
    of all training interactions."""
    ordered = np.sort(item_counts)[::-1]
    reached = int(np.searchsorted(np.cumsum(ordered), share * ordered.sum()))
    return int(ordered[min(reached, len(ordered) - 1)])


def _popularity_slices(item_counts: np.ndarray, targets: Mapping[int, int]) -> Tuple[Tuple[str, ...], Dict[int, str]]:
    head = max(head_threshold(item_counts), COLD_MAX + 1)  # a head item is never cold
    middle = f"{COLD_MAX + 1}-{head - 1}" if head - 1 > COLD_MAX else "none"
    names = (f"cold (<={COLD_MAX})", f"middle ({middle})", f"head (>={head})")
    def name(count: int) -> str:
        return names[0] if count <= COLD_MAX else names[2] if count >= head else names[1]
    return names, {u: name(int(item_counts[i])) for u, i in targets.items()}


def user_slices(train_dataset: Dataset, test_dataset: Dataset) -> Slices:
    """The slices of the test users of ``test_dataset`` (its users are the evaluated ones)."""
    user_counts, item_counts = training_counts(train_dataset)
    targets = held_out_items(test_dataset)
    history = _history_slices({u: int(user_counts[u]) for u in targets})
    popularity = _popularity_slices(item_counts, targets)
    return Slices({"history": history[0], "popularity": popularity[0]},
                  {"history": history[1], "popularity": popularity[1]})


def slice_means(per_user: Mapping[int, float], slices: Slices) -> Dict[str, Dict[str, Tuple[float, int]]]:
    """Per family and slice: the mean of ``per_user`` over its users and their number."""
    out: Dict[str, Dict[str, Tuple[float, int]]] = {}
    for family, names in slices.order.items():
        out[family] = {}
        for name in names:
            values = [per_user[u] for u in slices.users(family, name) if u in per_user]
            out[family][name] = (float(np.mean(values)) if values else float("nan"), len(values))
    return out


def slice_differences(a: Mapping[int, float], b: Mapping[int, float], slices: Slices, seed: int = 0
                      ) -> Dict[str, Dict[str, Tuple[float, float, float, int]]]:
    """Per family and slice: the mean of a - b over the users both have, its 95% paired bootstrap interval and
    the number of users."""
    out: Dict[str, Dict[str, Tuple[float, float, float, int]]] = {}
    for family, names in slices.order.items():
        out[family] = {}
        for name in names:
            users = [u for u in slices.users(family, name) if u in a and u in b]
            if users:
                mean, lo, hi, _ = paired_bootstrap({u: a[u] for u in users}, {u: b[u] for u in users}, seed=seed)
                out[family][name] = (mean, lo, hi, len(users))
    return out


def slice_table(per_user: Mapping[str, Mapping[int, float]], slices: Slices,
                metrics: Sequence[str] = ("ndcg@10", "hit@10")) -> List[str]:
    """One log line per family: each slice's mean of ``metrics`` (those ``per_user`` has) and its users."""
    present = [m for m in metrics if m in per_user]
    lines = []
    for family, names in slices.order.items():
        means = {m: slice_means(per_user[m], slices)[family] for m in present}
        parts = [f"{name}: " + " ".join(f"{m} {means[m][name][0]:.4f}" for m in present)
                 + f" ({len(slices.users(family, name))} users)" for name in names]
        lines.append(f"slices by {family}: " + " | ".join(parts))
    return lines

"""Slices of the test users (``slices: True``, ``evaluator/slices.py``): known answers of the head threshold, the history
terciles and the slice means; training counts equal across a general and a sequential model's data and a count by
hand; the same slices for every model and in the benchmark's report and its ``<name>.slices.json``."""
import json
import logging
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

import recbole_lrgd.quick_start as quick_start
from conftest import run_live

from recbole_lrgd.benchmark.report import markdown_report, per_user, slice_section
from recbole_lrgd.benchmark.run import run_benchmark
from recbole_lrgd.benchmark.store import load_slices, save_slices
from recbole_lrgd.data.candidates import candidates_digest
from recbole_lrgd.evaluator.slices import (Slices, _history_slices, held_out_items, head_threshold, slice_differences,
                                      slice_means, slice_table, training_counts, user_slices)
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.results import RunResult


# ---------------------------------------------------------------- known answers on hand-made values

@pytest.mark.parametrize("counts, head", [
    ([10, 5, 3, 1, 1], 10),  # 20% of 20 = 4: the first item alone holds it
    ([1, 10, 1, 3, 5], 10),  # the order given does not matter
    ([4, 4, 4, 1, 1, 1], 4),  # 20% of 15 = 3: reached by the first 4, and its ties are head too
    ([3, 3, 3, 3, 3, 1, 1, 1, 1, 1], 3),  # 20% of 20 = 4: two items of 3 needed
    ([2, 2, 1, 1, 1, 1, 1, 1], 2),  # 20% of 10 = 2: exactly the first item's count
    ([3, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1], 2),  # 20% of 21 = 4.2: 3 + 2 reach it, every item of 2 is head
    ([5, 5, 5, 5], 5),
])
def test_head_threshold_is_the_fewest_interactions_of_the_items_that_hold_a_fifth(counts, head):
    assert head_threshold(np.array(counts)) == head


def test_head_threshold_of_another_share():
    assert head_threshold(np.array([10, 5, 3, 1, 1]), share=0.5) == 10  # 10 alone holds half of 20
    assert head_threshold(np.array([10, 5, 3, 1, 1]), share=0.6) == 5  # 10 + 5 >= 12
    assert head_threshold(np.array([10, 5, 3, 1, 1]), share=1.0) == 1  # every item


def test_history_slices_cut_at_the_terciles():
    # six users with 1..6 training interactions: terciles 2.67 and 4.33, cut at 2 and 4
    order, labels = _history_slices({10 + c: c for c in range(1, 7)})
    assert order == ("1-2", "3-4", "5+")
    assert labels == {11: "1-2", 12: "1-2", 13: "3-4", 14: "3-4", 15: "5+", 16: "5+"}
    # terciles 3 and 5.33 of 3, 3, 3, 3, 4, 5, 6, 7, 8 cut at 3 and 5: a slice of one count is named by it
    counts = {u: c for u, c in enumerate([3, 3, 3, 3, 4, 5, 6, 7, 8])}
    order, labels = _history_slices(counts)
    assert order == ("3", "4-5", "6+")
    assert [labels[u] for u in range(9)] == ["3"] * 4 + ["4-5"] * 2 + ["6+"] * 3


def test_every_user_is_in_exactly_one_history_slice_whose_range_holds_its_count():
    rng = np.random.default_rng(3)
    counts = {int(u): int(c) for u, c in enumerate(rng.integers(1, 40, size=57))}
    order, labels = _history_slices(counts)
    assert set(labels) == set(counts) and set(labels.values()) <= set(order)
    for user, count in counts.items():
        name = labels[user]
        if name.endswith("+"):
            low, high = int(name[:-1]), math.inf
        elif "-" in name:
            low, high = map(int, name.split("-"))
        else:
            low = high = int(name)
        assert low <= count <= high, (user, count, name)
    sizes = Counter(labels.values())
    assert len(order) == 3 and all(15 <= sizes[name] <= 23 for name in order), sizes  # about a third each


def _slices():
    """Users 1..6 in two families: history a (1, 2, 3), b (4, 5), c (6); popularity p (1, 4), q (2, 3, 5, 6), r
    (nobody)."""
    return Slices({"history": ("a", "b", "c"), "popularity": ("p", "q", "r")},
                  {"history": {1: "a", 2: "a", 3: "a", 4: "b", 5: "b", 6: "c"},
                   "popularity": {1: "p", 4: "p", 2: "q", 3: "q", 5: "q", 6: "q"}})


def test_slice_means_known_values_and_users():
    values = {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.25, 5: 0.75, 6: 0.2, 99: 7.0}  # 99 is in no slice
    means = slice_means(values, _slices())
    assert means["history"] == {"a": (0.5, 3), "b": (0.5, 2), "c": (0.2, 1)}
    assert means["popularity"]["p"] == (0.625, 2) and means["popularity"]["q"] == (pytest.approx(0.3625), 4)
    assert math.isnan(means["popularity"]["r"][0]) and means["popularity"]["r"][1] == 0
    # a user the metric lacks is left out of the mean and the count
    assert slice_means({1: 1.0, 2: 0.0}, _slices())["history"]["a"] == (0.5, 2)


def test_slice_differences_known_intervals_and_users():
    a = {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.25, 5: 0.75, 6: 0.5}
    same = slice_differences(a, a, _slices())
    assert same["history"] == {"a": (0.0, 0.0, 0.0, 3), "b": (0.0, 0.0, 0.0, 2), "c": (0.0, 0.0, 0.0, 1)}
    assert "r" not in same["popularity"]  # a slice without users has no interval
    shifted = {u: v - 0.25 for u, v in a.items() if u != 3}  # user 3 missing from b: left out
    diff = slice_differences(a, shifted, _slices())
    assert diff["history"]["a"] == (0.25, 0.25, 0.25, 2)
    assert diff["popularity"] == {"p": (0.25, 0.25, 0.25, 2), "q": (0.25, 0.25, 0.25, 3)}
    mixed = slice_differences({1: 1.0, 2: 0.0, 3: 1.0}, {1: 0.0, 2: 0.0, 3: 0.0}, _slices())["history"]["a"]
    assert mixed[0] == pytest.approx(2 / 3) and 0.0 <= mixed[1] < mixed[0] < mixed[2] <= 1.0 and mixed[3] == 3


def test_slice_table_one_line_per_family():
    per_metric = {"ndcg@10": {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.25, 5: 0.75, 6: 0.2},
                  "hit@10": {1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0, 5: 1.0, 6: 1.0}}
    assert slice_table(per_metric, _slices()) == [
        "slices by history: a: ndcg@10 0.5000 hit@10 0.6667 (3 users) | b: ndcg@10 0.5000 hit@10 1.0000 (2 users) "
        "| c: ndcg@10 0.2000 hit@10 1.0000 (1 users)",
        "slices by popularity: p: ndcg@10 0.6250 hit@10 1.0000 (2 users) | q: ndcg@10 0.3625 hit@10 0.7500 (4 users) "
        "| r: ndcg@10 nan hit@10 nan (0 users)"]


def test_held_out_items_refuses_two_rows_of_one_user():
    class Data:
        uid_field, iid_field = "user_id", "item_id"
        inter_feat = Interaction({"user_id": torch.tensor([1, 2, 1]), "item_id": torch.tensor([5, 6, 7])})

    with pytest.raises(LRGDError, match=r"slices read one held-out test item per user \(leave-one-out") as info:
        held_out_items(Data())
    assert "\n" not in str(info.value)
    Data.inter_feat = Interaction({"user_id": torch.tensor([1, 2, 3]), "item_id": torch.tensor([5, 6, 5])})
    assert held_out_items(Data()) == {1: 5, 2: 6, 3: 5}


# ---------------------------------------------------------------- on the tiny dataset

def _cfg(data_path, **extra):
    return {"data_path": data_path, "eval_users": 8, "use_gpu": False, "state": "WARNING", "eval_batch_size": 100,
            "show_progress": False, "score_cache": False, "epochs": 1, "train_batch_size": 64, **extra}


def _by_hand(folder, dataset):
    """Training interactions per user id and item id from the .inter file: each user's rows in time order but its
    last two (leave-one-out: valid and test)."""
    rows = {}
    with open(os.path.join(folder, "tiny", "tiny.inter")) as f:
        next(f)
        for line in f:
            user, item, t = line.rstrip("\n").split("\t")
            rows.setdefault(user, []).append((float(t), item))
    users, items = np.zeros(dataset.user_num, dtype=np.int64), np.zeros(dataset.item_num, dtype=np.int64)
    for user, seq in rows.items():
        for _, item in sorted(seq)[:-2]:
            users[dataset.token2id("user_id", user)] += 1
            items[dataset.token2id("item_id", item)] += 1
    return users, items


def test_training_counts_are_the_same_for_general_and_sequential_models_and_by_hand(tiny_data, tiny_llm_dir):
    pop = quick_start.build("Pop", "tiny", config_dict=_cfg(tiny_data))
    users, items = training_counts(pop.train_data._dataset)
    hand_users, hand_items = _by_hand(tiny_data, pop.train_data._dataset)
    assert users.tolist() == hand_users.tolist() and items.tolist() == hand_items.tolist()
    with open(os.path.join(tiny_data, "tiny", "tiny.inter")) as f:
        rows = sum(1 for _ in f) - 1
    assert users.sum() == items.sum() == rows - 2 * 30 and users[0] == items[0] == 0  # id 0 is the padding
    for model, extra in (("LRGD", {"llm_path": tiny_llm_dir, "demo_mode": "none"}), ("SASRec", {})):
        built = quick_start.build(model, "tiny", config_dict=_cfg(tiny_data, **extra))
        train = built.train_data._dataset
        assert "item_id_list" in train.inter_feat  # the augmented rows: one fewer per user than its interactions
        assert len(train.inter_feat) == users.sum() - 30
        seq_users, seq_items = training_counts(train)
        assert seq_users.tolist() == users.tolist() and seq_items.tolist() == items.tolist(), model
        assert user_slices(train, built.test_data._dataset) == user_slices(pop.train_data._dataset,
                                                                           pop.test_data._dataset)


def test_user_slices_of_the_tiny_data(tiny_data):
    built = quick_start.build("Pop", "tiny", config_dict=_cfg(tiny_data))
    slices = user_slices(built.train_data._dataset, built.test_data._dataset)
    users, items = _by_hand(tiny_data, built.train_data._dataset)
    targets = held_out_items(built.test_data._dataset)
    evaluated = set(built.test_data.uid_list.tolist())
    assert set(targets) == evaluated and len(evaluated) == 8
    head = head_threshold(items)
    assert slices.order["popularity"] == ("cold (<=5)", f"middle (6-{head - 1})", f"head (>={head})")
    for family in ("history", "popularity"):
        assert set(slices.labels[family]) == evaluated
        assert sorted(u for name in slices.order[family] for u in slices.users(family, name)) == sorted(evaluated)
    assert slices.labels["history"] == _history_slices({u: int(users[u]) for u in evaluated})[1]
    for user, item in targets.items():
        count = items[item]
        want = "cold (<=5)" if count <= 5 else f"head (>={head})" if count >= head else f"middle (6-{head - 1})"
        assert slices.labels["popularity"][user] == want
    # the held-out test item is the user's last interaction in the file
    with open(os.path.join(tiny_data, "tiny", "tiny.inter")) as f:
        next(f)
        last = {}
        for line in f:
            user, item, _ = line.rstrip("\n").split("\t")
            last[user] = item
    dataset = built.test_data._dataset
    assert {u: dataset.id2token("item_id", i) for u, i in targets.items()} == {
        u: last[dataset.id2token("user_id", u)] for u in targets}


def test_every_model_has_the_slices_of_dataset_slices_and_logs_them(tiny_data, tiny_llm_dir, caplog):
    expected = quick_start.dataset_slices("tiny", None, _cfg(tiny_data))
    with caplog.at_level(logging.INFO):
        built, lrgd = run_live("LRGD", "tiny", config_dict=_cfg(tiny_data, llm_path=tiny_llm_dir, demo_mode="none",
                                                                   slices=True), saved=False)
    pop = quick_start.run("Pop", "tiny", config_dict=_cfg(tiny_data, slices=True), saved=False)
    assert lrgd.slices == pop.slices == expected
    assert set(expected.labels["history"]) == set(lrgd.test_per_user["ndcg@10"])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("slices by ")]
    assert len(lines) == 2
    for family, line in zip(("history", "popularity"), lines):
        parts = []
        for name in expected.order[family]:
            users = expected.users(family, name)
            ndcg = np.mean([lrgd.test_per_user["ndcg@10"][u] for u in users]) if users else math.nan
            hit = np.mean([lrgd.test_per_user["hit@10"][u] for u in users]) if users else math.nan
            parts.append(f"{name}: ndcg@10 {ndcg:.4f} hit@10 {hit:.4f} ({len(users)} users)")
        assert line == f"slices by {family}: " + " | ".join(parts)
    assert quick_start.run("Pop", "tiny", config_dict=_cfg(tiny_data), saved=False).slices is None


# ---------------------------------------------------------------- the benchmark's slice report and store

def _row(variant, values):
    return {"variant": variant, "model": variant, "candidates": "c", "test_users": len(values),
            "fit_time_s": 0.0, "eval_time_s": 0.0, "ndcg@10": float(np.mean(list(values.values()))),
            "per_user_ndcg10": {str(u): v for u, v in values.items()}}


A = {1: 1.0, 2: 0.5, 3: 0.0, 4: 0.25, 5: 0.75, 6: 0.0}
B = {1: 0.5, 2: 0.5, 3: 0.0, 4: 0.0, 5: 0.5, 6: 0.0}


def test_per_user_reads_ndcg_and_hit_from_a_row():
    row = _row("A", A)
    assert per_user(row) == A
    assert per_user(row, "hit@10") == {1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0, 5: 1.0, 6: 0.0}
    assert per_user({"variant": "x"}) == {}


def test_slice_section_known_cells_empty_slices_and_pairs():
    out = slice_section([_row("A", A), _row("B", B), {"variant": "C"}], _slices(), [("A", "B"), ("A", "C")])
    assert out[:7] == [
        "", "NDCG@10 / Hit@10 by history slice (users per slice in the header):", "",
        "| Model | a (3) | b (2) | c (1) |", "|---|---|---|---|",
        "| A | 0.5000 / 0.667 | 0.5000 / 1.000 | 0.0000 / 0.000 |",
        "| B | 0.3333 / 0.667 | 0.2500 / 0.500 | 0.0000 / 0.000 |"]  # C has no per-user values: no line
    assert out[7:9] == ["", "- A vs B, NDCG@10 difference by history: a +0.1667 [+0.0000, +0.5000] (3 users); "
                            "b +0.2500 [+0.2500, +0.2500] (2 users); c +0.0000 [+0.0000, +0.0000] (1 users)"]
    popularity = out[9:]
    assert popularity[3] == "| Model | p (2) | q (4) | r (0) |"
    assert popularity[5] == "| A | 0.6250 / 1.000 | 0.3125 / 0.500 | – |"  # r has no users
    assert popularity[7:] == ["", "- A vs B, NDCG@10 difference by popularity: p +0.3750 [+0.2500, +0.5000] (2 users); "
                                  "q +0.0625 [+0.0000, +0.1875] (4 users)"]  # A vs C: C has no per-user values


def test_markdown_report_has_the_slice_tables_only_with_slices():
    rows = [_row("A", A), _row("B", B)]
    plain = markdown_report("tiny", rows, {}, pairs=[("A", "B")])
    assert "by history slice" not in plain and "- A vs B: NDCG@10 difference +0.1667" in plain
    report = markdown_report("tiny", rows, {}, pairs=[("A", "B")], slices=_slices())
    assert report.startswith(plain.rstrip("\n"))
    assert "| A | 0.5000 / 0.667 | 0.5000 / 1.000 | 0.0000 / 0.000 |" in report
    assert "- A vs B, NDCG@10 difference by popularity: p +0.3750" in report


def test_slices_round_trip_through_their_file(tmp_path):
    path = str(tmp_path / "x.slices.json")
    assert load_slices(path) is None
    labels = {**_slices().labels, "history": {**_slices().labels["history"], 12: "a"}}  # 12 sorts before 2 as text
    slices = Slices(_slices().order, labels)
    save_slices(path, slices)
    loaded = load_slices(path)
    assert loaded == slices and loaded.order["history"] == ("a", "b", "c")
    assert all(isinstance(u, int) for u in loaded.labels["history"])
    with open(path) as f:
        assert json.load(f)["labels"]["history"]["12"] == "a"


def _fake_run(model, dataset, config_file_list=None, config_dict=None, saved=True):
    """A RecBole-free result whose per-user NDCG@10 are A's for LRGD and B's for Pop."""
    class Data:
        def candidate_sets(self):
            return {1: [1, 2, 3]}

    values = A if model == "LRGD" else B
    return RunResult(model=model, dataset=dataset, test_result={"ndcg@10": float(np.mean(list(values.values())))},
                     best_valid_score=None, valid_score_bigger=True, best_valid_result=None, fit_time=1.0,
                     eval_time=2.0, test_users=len(values), candidates=candidates_digest(Data()),
                     test_per_user={"ndcg@10": dict(values)})


def test_the_benchmark_with_slices_writes_their_tables_and_file(tiny_data, tmp_path, monkeypatch):
    asked = []

    def dataset_slices(dataset, config_file_list=None, config_dict=None):
        asked.append((dataset, config_file_list, dict(config_dict)))
        return _slices()

    monkeypatch.setattr(quick_start, "run", _fake_run)
    monkeypatch.setattr(quick_start, "dataset_slices", dataset_slices)
    out = str(tmp_path / "out")
    shared = {"slices": True, "eval_users": 6, "data_path": tiny_data}
    result = run_benchmark("tiny", ["LRGD-zero-shot", "Pop"], shared, out_dir=out, plot=False, progress=False,
                           pairs=[("LRGD-zero-shot", "Pop")])
    assert asked == [("tiny", None, shared)]  # read once, from the shared config
    assert load_slices(result["paths"]["slices.json"]) == _slices()
    assert result["paths"]["slices.json"] == os.path.join(out, "compare_tiny.slices.json")
    with open(result["paths"]["md"]) as f:
        md = f.read()
    assert "| LRGD-zero-shot | 0.5000 / 0.667 | 0.5000 / 1.000 | 0.0000 / 0.000 |" in md
    assert "| Pop | 0.3333 / 0.667 | 0.2500 / 0.500 | 0.0000 / 0.000 |" in md
    assert "| LRGD-zero-shot | 0.6250 / 1.000 | 0.3125 / 0.500 | – |" in md
    assert "- LRGD-zero-shot vs Pop, NDCG@10 difference by history: a +0.1667 [+0.0000, +0.5000] (3 users)" in md
    assert "- LRGD-zero-shot vs Pop: NDCG@10 difference +0.1667" in md
    assert result["bootstrap"][-1].startswith("LRGD-zero-shot vs Pop: NDCG@10 difference +0.1667")
    # without slices: no slice tables, no slices file
    plain = run_benchmark("tiny", ["LRGD-zero-shot", "Pop"], {"eval_users": 6, "data_path": tiny_data}, out_dir=out,
                          name="plain", plot=False, progress=False)
    assert not os.path.exists(plain["paths"]["slices.json"]) and len(asked) == 1
    with open(plain["paths"]["md"]) as f:
        assert "slice" not in f.read()


def test_history_slices_never_name_an_empty_slice():
    """Terciles that reach the longest history, or tie, give fewer slices, each holding users."""
    from recbole_lrgd.evaluator.slices import _history_slices

    for counts in ({1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 8, 7: 8, 8: 8}, {1: 5, 2: 5, 3: 5}, {1: 2, 2: 2, 3: 2, 4: 5,
                                                                                         5: 5, 6: 5, 7: 9, 8: 9, 9: 9}):
        names, labels = _history_slices(counts)
        assert set(labels.values()) == set(names)
    assert _history_slices({1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 8, 7: 8, 8: 8})[0] == ("4-6", "7+")
    assert _history_slices({1: 2, 2: 2, 3: 2, 4: 5, 5: 5, 6: 5, 7: 9, 8: 9, 9: 9})[0] == ("2", "3-5", "6+")


def test_a_head_item_is_never_cold():
    """Where the head threshold falls at or below the cold bound, the head starts above it."""
    from recbole_lrgd.evaluator.slices import _popularity_slices

    names, labels = _popularity_slices(np.array([0, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2]), {1: 1, 2: 7})
    assert names == ("cold (<=5)", "middle (none)", "head (>=6)")
    assert labels == {1: "cold (<=5)", 2: "cold (<=5)"}

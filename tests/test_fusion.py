"""Fusion of LRGD's scores of sampled candidates with a prior RecBole model's (``prior_model``, ``prior_weight``):
the z-score blend and NDCG@10 on known answers, the weight chosen on validation users only, the prior's own metrics
at weight 1 and LRGD's at 0, one-line errors before the LLM loads, the benchmark's fusion rows and ``--pairs``, and
the config hash over the properties files' keys and values."""
import dataclasses
import json
import logging
import math
import os
import sys

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

import recbole_lrgd.quick_start as quick_start
import recbole_lrgd.trainer as trainer_module
from conftest import run_live

from recbole_lrgd.benchmark import store
from recbole_lrgd.benchmark.report import markdown_report
from recbole_lrgd.benchmark.run import main, run_benchmark
from recbole_lrgd.benchmark.store import config_hash, load_rows, make_row
from recbole_lrgd.benchmark.variants import FUSION_VALID_USERS, check_variant, resolve_variant, variant_config
from recbole_lrgd.data.candidates import candidates_digest
from recbole_lrgd.evaluator.slices import held_out_items
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.rerank.blend import blended, standardised
from recbole_lrgd.rerank.fuse import WEIGHT_GRID, Fusion, choose_weight, ndcg10, user_blocks
from recbole_lrgd.results import RunResult

R15 = math.sqrt(1.5)  # z of 0, 1, 2: -R15, 0, R15 (std sqrt(2/3))


# ---------------------------------------------------------------- the blend and NDCG@10 on known answers

def test_blended_is_the_weighted_sum_of_z_scores():
    llm, other = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32), np.array([10, 10, 20, 40])
    z_llm = np.array([-3, -1, 1, 3]) / math.sqrt(5)  # mean 2.5, std sqrt(1.25)
    z_other = np.array([-10, -10, 0, 20]) / math.sqrt(150)  # mean 20, std sqrt(150)
    out = blended(llm, other, 0.3)
    assert out.dtype == np.float64
    assert out == pytest.approx(0.7 * z_llm + 0.3 * z_other, abs=1e-12)
    assert blended(llm, other, 0.0) == pytest.approx(z_llm, abs=1e-12)
    assert blended(llm, other, 1.0) == pytest.approx(z_other, abs=1e-12)


def test_z_of_a_constant_vector_is_zeros():
    assert standardised(np.full(4, 7.5)).tolist() == [0.0] * 4
    assert blended(np.full(3, 2.0), np.array([0.0, 1.0, 2.0]), 0.5) == pytest.approx([-R15 / 2, 0.0, R15 / 2])
    assert blended(np.array([0.0, 1.0, 2.0]), np.zeros(3), 0.5) == pytest.approx([-R15 / 2, 0.0, R15 / 2])
    assert blended(np.ones(2), np.ones(2), 0.3).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("scores, target, expected", [
    ([5.0, 1.0, 2.0], 0, 1.0),  # first
    ([5.0, 1.0, 2.0], 2, 1 / math.log2(3)),  # second
    ([3.0, 3.0, 1.0], 0, 1 / math.log2(2.5)),  # tied at the top: half a place
    ([3.0, 3.0, 3.0, 1.0], 1, 1 / math.log2(3)),  # tied with two: one place
    (list(range(11, 0, -1)), 9, 1 / math.log2(11)),  # tenth
    (list(range(11, 0, -1)), 10, 0.0),  # eleventh
    ([2.0] * 11 + [1.0], 0, 1 / math.log2(7)),  # ten ties: five places above, inside the ten
    ([2.0] * 22, 0, 0.0),  # 21 ties: 10.5 places above, outside the ten
])
def test_ndcg10_known_values(scores, target, expected):
    assert ndcg10(np.array(scores), target) == pytest.approx(expected, abs=1e-15)


def _prior_right_llm_wrong():
    """The LLM ranks the target (index 0) last, the prior first: z(LLM) -R15, 0, R15; z(prior) R15, -R15, 0. The blend
    puts the target above index 1 for w > 1/3 and above index 2 for w > 2/3: last up to 0.3, second from 0.4 to 0.6,
    first from 0.7."""
    return np.array([0.0, 1.0, 2.0]), np.array([10.0, 0.0, 5.0]), 0


def test_choose_weight_takes_the_smallest_of_the_best_weights():
    weight, means = choose_weight([_prior_right_llm_wrong()])
    assert weight == 0.7
    assert list(means) == list(WEIGHT_GRID) == [k / 10 for k in range(11)]
    assert means == pytest.approx({**{w: 0.5 for w in (0.0, 0.1, 0.2, 0.3)},
                                   **{w: 1 / math.log2(3) for w in (0.4, 0.5, 0.6)},
                                   **{w: 1.0 for w in (0.7, 0.8, 0.9, 1.0)}})
    # the mirror block (the LLM right, the prior wrong) ties 0..0.3 with 0.7..1: the lowest, the LLM's side, wins
    llm, prior, target = _prior_right_llm_wrong()
    weight, means = choose_weight([(llm, prior, target), (prior, llm, target)])
    assert weight == 0.0 and means[0.0] == means[1.0] == 0.75 and means[0.5] < 0.75
    assert choose_weight([_prior_right_llm_wrong()], grid=(0.0, 0.5, 1.0))[0] == 1.0


def test_user_blocks_group_rows_by_user_in_order_of_first_appearance():
    users = np.array([4, 4, 9, 9, 4])
    llm, prior = np.arange(5.0), np.arange(5.0) * 10
    blocks = user_blocks(users, llm, prior, np.array([0, 1, 1, 0, 0]))
    assert [(b[0].tolist(), b[1].tolist(), b[2]) for b in blocks] == [
        ([0.0, 1.0, 4.0], [0.0, 10.0, 40.0], 1), ([2.0, 3.0], [20.0, 30.0], 0)]


def test_fuse_z_scores_each_users_rows_among_themselves():
    users = np.array([7, 3, 7, 3, 7])
    llm = np.array([0.0, 100.0, 1.0, 200.0, 2.0])
    prior = np.array([0.0, 5.0, 0.0, 5.0, 3.0])  # user 3's prior ties: zeros
    fused = Fusion(prior=None, weight=0.25).fuse(users, llm, prior)
    z_llm_7 = np.array([-R15, 0.0, R15])
    z_prior_7 = np.array([-1.0, -1.0, 2.0]) / math.sqrt(2)  # 0, 0, 3: mean 1, std sqrt(2)
    assert fused[[0, 2, 4]] == pytest.approx(0.75 * z_llm_7 + 0.25 * z_prior_7, abs=1e-12)
    assert fused[[1, 3]] == pytest.approx([-0.75, 0.75], abs=1e-12)  # z(100, 200) = -1, 1
    assert Fusion(None, 0.0).fuse(users, llm, prior)[[1, 3]] == pytest.approx([-1.0, 1.0])
    assert Fusion(None, 1.0).fuse(users, llm, prior).tolist()[1::2] == [0.0, 0.0]


def test_with_weight_gives_a_new_fusion_with_a_float_weight():
    auto = Fusion(prior="model", weight="auto")
    chosen = auto.with_weight(1)
    assert auto.weight == "auto" and chosen.weight == 1.0 and isinstance(chosen.weight, float)
    assert chosen.prior == "model"
    with pytest.raises(dataclasses.FrozenInstanceError):
        chosen.weight = 0.5


def test_prior_scores_are_the_priors_predict_in_float64():
    class Prior(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5))

        def predict(self, interaction):
            return interaction["item_id"].float() * self.scale

    scores = Fusion(Prior(), 0.5).prior_scores(Interaction({"item_id": torch.tensor([1, 2, 7])}))
    assert scores.dtype == np.float64 and scores.tolist() == [0.5, 1.0, 3.5]


# ---------------------------------------------------------------- end to end on the tiny data

def _cfg(data_path, **extra):
    return {"data_path": data_path, "eval_users": 8, "use_gpu": False, "state": "WARNING", "eval_batch_size": 100,
            "show_progress": False, "score_cache": False, "epochs": 1, "train_batch_size": 64, **extra}


def _lrgd_cfg(data_path, llm_dir, **extra):
    return _cfg(data_path, llm_path=llm_dir, demo_mode="none", **extra)


def test_weight_one_gives_the_priors_own_metrics_and_zero_lrgds(tiny_data, tiny_llm_dir):
    pop = quick_start.run("Pop", "tiny", config_dict=_cfg(tiny_data), saved=False)
    lrgd = quick_start.run("LRGD", "tiny", config_dict=_lrgd_cfg(tiny_data, tiny_llm_dir), saved=False)
    at_one = quick_start.run("LRGD", "tiny", config_dict=_lrgd_cfg(tiny_data, tiny_llm_dir, prior_model="Pop",
                                                                    prior_weight=1), saved=False)
    at_zero = quick_start.run("LRGD", "tiny", config_dict=_lrgd_cfg(tiny_data, tiny_llm_dir, prior_model="Pop",
                                                                     prior_weight=0), saved=False)
    assert pop.candidates == lrgd.candidates == at_one.candidates == at_zero.candidates
    assert at_one.test_users == at_zero.test_users == 8 and len(at_one.test_per_user["ndcg@10"]) == 8
    assert at_one.test_result == pop.test_result and at_one.test_per_user == pop.test_per_user
    assert at_zero.test_result == lrgd.test_result and at_zero.test_per_user == lrgd.test_per_user
    assert at_one.test_result != lrgd.test_result  # the two references differ: the weight matters
    assert (at_one.prior_weight, at_zero.prior_weight, lrgd.prior_weight) == (1.0, 0.0, None)


def test_auto_chooses_the_weight_on_validation_users_only(tiny_data, tiny_llm_dir, monkeypatch, caplog):
    """The blocks the weight is chosen on are the validation users' (their held-out validation item is the
    positive), one per validation user, and the chosen weight is choose_weight's on them."""
    calls, chosen_on = [], []
    prior_scores, real_choose = Fusion.prior_scores, trainer_module.choose_weight

    def recording_prior_scores(self, interaction):
        calls.append((interaction["user_id"].tolist(), interaction["item_id"].tolist(),
                      interaction["label"].tolist()))
        return prior_scores(self, interaction)

    def recording_choose(blocks, *args, **kwargs):
        chosen_on.append((list(blocks), list(calls)))
        return real_choose(blocks, *args, **kwargs)

    monkeypatch.setattr(Fusion, "prior_scores", recording_prior_scores)
    monkeypatch.setattr(trainer_module, "choose_weight", recording_choose)
    with caplog.at_level(logging.INFO):
        built, result = run_live("LRGD", "tiny", config_dict=_lrgd_cfg(tiny_data, tiny_llm_dir, prior_model="Pop",
                                                                       valid_users=5), saved=False)
    assert len(chosen_on) == 1
    blocks, seen = chosen_on[0]
    valid_users = set(built.valid_data.uid_list.tolist())
    assert len(blocks) == len(valid_users) == 5 and result.test_users == 8
    positives = {(u, i) for users, items, labels in seen for u, i, y in zip(users, items, labels) if y > 0}
    assert positives == set(held_out_items(built.valid_data._dataset).items())
    test_targets = held_out_items(built.test_data._dataset)
    assert not positives & set(test_targets.items())  # no test user's held-out item was read to choose
    assert result.prior_weight in WEIGHT_GRID and result.prior_weight == real_choose(blocks)[0]
    assert built.trainer.fusion.weight == result.prior_weight
    lines = [r.getMessage() for r in caplog.records if "auto chose" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].endswith(f"auto chose {result.prior_weight:g} by NDCG@10 on 5 validation users ("
                             + ", ".join(f"{w:g}: {m:.4f}" for w, m in real_choose(blocks)[1].items()) + ")")


def _fails_before_the_llm(monkeypatch, match, **extra):
    def no_load(config):
        raise AssertionError("the LLM was loaded before the bad input was reported")

    monkeypatch.setattr(quick_start, "load_config_llm", no_load)
    with pytest.raises(LRGDError, match=match) as info:
        quick_start.run("LRGD", "tiny", config_dict=extra, saved=False)
    assert "\n" not in str(info.value)
    for written in ("log", "log_tensorboard", "saved"):
        assert not os.path.exists(written), f"{written}/ was written before the error"


FULL = {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"}


@pytest.mark.parametrize("keys, match", [
    ({"prior_model": "Pop"}, r"prior_weight auto chooses the weight on validation users: set valid_users"),
    ({"prior_model": "Pop", "prior_weight": "auto", "valid_users": None}, "prior_weight auto chooses the weight"),
    ({"prior_model": "Pop", "prior_weight": 0.5, "candidate_source": "BPR"},
     "prior_model and candidate_source both set"),
    ({"prior_model": "Pop", "prior_weight": 0.5, "eval_args": FULL},
     r"prior_model fuses scores of sampled candidates \(eval_args mode uni19 or pop19\)"),
    ({"prior_model": "Pop", "prior_weight": 0.5, "eval_args": {**FULL, "mode": {"valid": "full", "test": "uni19"}}},
     "prior_model fuses scores of sampled candidates"),
    ({"prior_model": "Nope", "prior_weight": 0.5}, "prior_model 'Nope' is neither a RecBole model name"),
    ({"prior_model": "nope.pth", "prior_weight": 0.5}, r"prior_model nope\.pth does not exist"),
    ({"prior_model": "Pop", "prior_weight": 1.5}, r"prior_weight must be a number >= 0 and <= 1 or auto, not 1\.5"),
    ({"prior_model": "Pop", "prior_weight": "half"}, "prior_weight must be a number >= 0 and <= 1 or auto"),
])
def test_bad_fusion_settings_are_one_line_before_the_llm_loads(tiny_data, tiny_llm_dir, monkeypatch, keys, match):
    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py"])
    _fails_before_the_llm(monkeypatch, match, **_lrgd_cfg(tiny_data, tiny_llm_dir, **keys))


# ---------------------------------------------------------------- the benchmark's fusion rows

def test_fusion_variant_names_parse_into_lrgd_keys():
    assert resolve_variant("BPR+LRGD-nearest") == (
        "LRGD", {"prior_model": "BPR", "demo_mode": "nearest", "prior_weight": "auto"})
    assert resolve_variant("BPR+LRGD-nearest@0.3") == (
        "LRGD", {"prior_model": "BPR", "demo_mode": "nearest", "prior_weight": 0.3})
    assert resolve_variant("Pop+LRGD-zero-shot@1") == (
        "LRGD", {"prior_model": "Pop", "demo_mode": "none", "prior_weight": 1.0})
    assert resolve_variant("SASRec+LRGD-stage1+2@0") == (
        "LRGD", {"prior_model": "SASRec", "demo_mode": "lrgd", "lrgd_stages": 2, "prior_weight": 0.0})
    check_variant("BPR+LRGD-nearest", "sampled")


@pytest.mark.parametrize("name, message", [
    ("Foo+LRGD-nearest", r"unknown benchmark variant 'Foo\+LRGD-nearest': 'Foo' is not a RecBole model name "
                         r"\(Pop, BPR, SASRec...\) in <Prior>\+LRGD-<mode>"),
    ("BPR+LRGD-bogus", "'LRGD-bogus' is not LRGD-<mode> with <mode> one of zero-shot, random, nearest"),
    ("BPR+nearest", "'nearest' is not LRGD-<mode>"),
    ("BPR+LRGD-nearest@2", "benchmark variant 'BPR\\+LRGD-nearest@2': the weight after @ must be a number >= 0 "
                           "and <= 1, not '2'"),
    ("BPR+LRGD-nearest@auto", "the weight after @ must be a number >= 0 and <= 1, not 'auto'"),
    ("bpr+LRGD-nearest", r"'bpr' is not a RecBole model name .*; did you mean 'BPR'\?$"),
])
def test_a_bad_fusion_variant_is_a_one_line_error(name, message):
    with pytest.raises(LRGDError, match=message) as info:
        resolve_variant(name)
    assert "\n" not in str(info.value)


def test_a_fusion_variant_is_refused_by_the_full_protocol():
    with pytest.raises(LRGDError, match=r"'BPR\+LRGD-nearest' fuses scores of sampled candidates: run it without "
                                        r"--protocol=full \(there, re-rank: BPR>LRGD-nearest\)") as info:
        check_variant("BPR+LRGD-nearest", "full")
    assert "\n" not in str(info.value)


def test_variant_config_of_fusion_rows():
    shared = {"valid_users": 7, "eval_users": 50}
    model, auto = variant_config("BPR+LRGD-nearest", shared, [])
    assert model == "LRGD" and auto["valid_users"] == FUSION_VALID_USERS == 300
    assert auto["retriever_valid_users"] == 7 and auto["prior_model"] == "BPR" and auto["prior_weight"] == "auto"
    assert auto["eval_users"] == 50 and shared == {"valid_users": 7, "eval_users": 50}  # the shared config unchanged
    _, fixed = variant_config("BPR+LRGD-nearest@0.3", shared, [])
    assert fixed["valid_users"] is None and fixed["retriever_valid_users"] == 7 and fixed["prior_weight"] == 0.3
    _, plain = variant_config("LRGD-nearest", shared, [])
    assert plain["valid_users"] is None and "retriever_valid_users" not in plain
    assert variant_config("BPR+LRGD-zero-shot", {}, [])[1]["retriever_valid_users"] is None


def _result(model, prior_weight=None, values=None):
    class Data:
        def candidate_sets(self):
            return {1: [1, 2, 3]}

    values = values or {1: 1.0, 2: 0.5}
    return RunResult(model=model, dataset="tiny", test_result={"ndcg@10": float(np.mean(list(values.values())))},
                     best_valid_score=None, valid_score_bigger=True, best_valid_result=None, fit_time=1.0,
                     eval_time=2.0, test_users=len(values), candidates=candidates_digest(Data()),
                     test_per_user={"ndcg@10": dict(values)}, prior_weight=prior_weight)


def test_make_row_keeps_the_prior_weight(tmp_path):
    row = make_row("BPR+LRGD-nearest", "LRGD", "tiny", "abc", _result("LRGD", 0.3))
    assert row["prior_weight"] == 0.3 and row["per_user_ndcg10"] == {"1": 1.0, "2": 0.5}
    assert "prior_weight" not in make_row("LRGD-nearest", "LRGD", "tiny", "abc", _result("LRGD"))
    assert make_row("X", "LRGD", "tiny", "abc", _result("LRGD", 0.0))["prior_weight"] == 0.0
    store.save_rows(str(tmp_path / "rows.json"), {"k": row})
    assert list(load_rows(str(tmp_path / "rows.json")).values()) == [row]
    report = markdown_report("tiny", [row], {})
    assert "Prior weights (auto: chosen on validation users): BPR+LRGD-nearest: 0.3" in report
    assert "Prior weights" not in markdown_report("tiny", [make_row("A", "LRGD", "tiny", "abc", _result("LRGD"))], {})


def test_the_benchmark_runs_fusion_rows_and_their_pairs(tiny_data, tmp_path, monkeypatch):
    seen = {}

    def fake_run(model, dataset, config_file_list=None, config_dict=None, saved=True):
        fusion = bool(config_dict.get("prior_model"))
        seen["fusion" if fusion else model] = (model, dict(config_dict))
        return _result(model, 0.4, {1: 1.0, 2: 1.0, 3: 0.5}) if fusion else _result(model, None, {1: 0.5, 2: 0.5,
                                                                                                   3: 0.5})

    monkeypatch.setattr(quick_start, "run", fake_run)
    out = str(tmp_path / "out")
    result = run_benchmark("tiny", ["BPR", "BPR+LRGD-nearest"], {"valid_users": 7, "data_path": tiny_data},
                           out_dir=out, plot=False, progress=False, pairs=[("BPR+LRGD-nearest", "BPR")])
    assert result["ran"] == ["BPR", "BPR+LRGD-nearest"] and not result["failed"]
    assert seen["BPR"][0] == "BPR" and seen["BPR"][1]["valid_users"] == 7 and "prior_model" not in seen["BPR"][1]
    model, cfg = seen["fusion"]
    assert model == "LRGD" and cfg["prior_model"] == "BPR" and cfg["prior_weight"] == "auto"
    assert cfg["demo_mode"] == "nearest" and cfg["valid_users"] == 300 and cfg["retriever_valid_users"] == 7
    assert result["rows"][1]["prior_weight"] == 0.4 and "prior_weight" not in result["rows"][0]
    assert len(result["bootstrap"]) == 1 and result["bootstrap"][0].startswith(
        "BPR+LRGD-nearest vs BPR: NDCG@10 difference +0.3333, 95% paired bootstrap CI [+0.0000, +0.5000] over 3 users")
    with open(result["paths"]["md"]) as f:
        md = f.read()
    assert "Prior weights (auto: chosen on validation users): BPR+LRGD-nearest: 0.4" in md
    assert "- BPR+LRGD-nearest vs BPR: NDCG@10 difference +0.3333" in md
    with open(result["paths"]["json"]) as f:
        assert [r.get("prior_weight") for r in json.load(f)["rows"]] == [None, 0.4]


def test_pairs_must_name_variants_the_benchmark_runs(tmp_path, monkeypatch, capsys):
    def no_run(*args, **kwargs):
        raise AssertionError("a model ran despite a bad --pairs")

    monkeypatch.setattr(quick_start, "run", no_run)
    out = tmp_path / "out"
    with pytest.raises(LRGDError, match=r"--pairs Pop:BPR names a variant the benchmark does not run "
                                        r"\(its models: Pop, LRGD-nearest\)") as info:
        run_benchmark("tiny", ["Pop", "LRGD-nearest"], {}, out_dir=str(out), pairs=[("Pop", "BPR")], progress=False)
    assert "\n" not in str(info.value) and not out.exists()
    assert main(["--dataset=tiny", "--models=Pop", "--pairs=Pop:BPR", f"--out={out}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --pairs Pop:BPR names a variant the benchmark does not run (its models: Pop)"]
    assert main(["--dataset=tiny", "--models=Pop,BPR", "--pairs=Pop:Pop", f"--out={out}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --pairs Pop:Pop compares a variant with itself: name two variants"]
    for bad in ("A", "A:B:C", "A:B,C"):
        assert main([f"--pairs={bad}", f"--out={out}"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: --pairs takes A:B pairs separated by commas, not {bad!r}"]
    assert not out.exists()


# ---------------------------------------------------------------- the config hash reads keys and values

def test_config_hash_reads_the_properties_files_keys_and_values_not_comments(tmp_path, monkeypatch):
    path = tmp_path / "overall.yaml"
    monkeypatch.setattr(store, "properties_files", lambda model, dataset: [str(path)])

    def digest(text):
        path.write_text(text)
        return config_hash("tiny", "LRGD", {"eval_users": 5}, [])

    base = digest("eval_users: 100   # the sample\nmetrics: [Hit, NDCG]\n")
    assert digest("# a new comment\neval_users: 100   # a sample of test users\nmetrics: [Hit, NDCG]\n") == base
    assert digest("metrics:\n  - Hit\n  - NDCG\neval_users: 100\n") == base  # same keys and values, new layout
    assert digest("eval_users: 101   # the sample\nmetrics: [Hit, NDCG]\n") != base
    assert digest("eval_users: 100   # the sample\nmetrics: [Hit, NDCG, MRR]\n") != base
    assert digest("eval_users: 100   # the sample\nmetrics: [Hit, NDCG]\nslices: True\n") != base
    broken = digest("eval_users: [100\n")  # not YAML: the file's bytes
    assert broken != base and digest("eval_users: [100\n") == broken and digest("eval_users: [100 \n") != broken

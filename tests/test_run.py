"""LRGD and RecBole baselines end to end through one loop, on a tiny generated dataset."""
import os

import numpy as np
import pytest

from conftest import install_stub_scorer, run_live

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.quick_start import run


def _cfg(data_path, **extra):
    cfg = {"data_path": data_path, "eval_users": 12, "show_progress": False, "use_gpu": False,
           "eval_batch_size": 100, "epochs": 1, "train_batch_size": 64, "num_demos": 2,
           "state": "WARNING"}
    cfg.update(extra)
    return cfg


def _lrgd(tiny_data, tiny_llm_dir, **extra):
    return run("LRGD", "tiny", config_dict=_cfg(tiny_data, llm_path=tiny_llm_dir, **extra), saved=False)


def test_lrgd_runs_end_to_end_and_is_deterministic(tiny_data, tiny_llm_dir):
    a = _lrgd(tiny_data, tiny_llm_dir, demo_mode="random", score_cache=False)  # both runs really score
    b = _lrgd(tiny_data, tiny_llm_dir, demo_mode="random", score_cache=False)
    assert a.test_users == 12
    assert set(a.test_result) >= {"hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10"}
    assert all(0.0 <= v <= 1.0 for v in a.test_result.values())
    assert a.test_result == b.test_result
    assert a.global_demo_users == b.global_demo_users


@pytest.mark.parametrize("mode,expected", [("none", {"hit@10": 0.0}), ("nearest", {"hit@1": 1.0})])
def test_demo_modes_run(tiny_data, tiny_llm_dir, monkeypatch, mode, expected):
    """A stub ranks the target first when the prompt shows demonstrations and last when it shows none: nearest
    shows each of the 12 users some, zero-shot none."""
    install_stub_scorer(monkeypatch, lambda prompt, target: np.array(
        [float((c == target) == bool(prompt.demonstrations)) for c in prompt.candidates]))
    result = _lrgd(tiny_data, tiny_llm_dir, demo_mode=mode)
    assert result.test_users == 12 and result.global_demo_users == ()  # neither shows one set to every user
    assert result.demonstrations == {"none": "none (zero-shot)", "nearest": "per user (most item overlap)"}[mode]
    for key, value in expected.items():
        assert result.test_result[key] == pytest.approx(value)


@pytest.mark.parametrize("invert,expected", [(False, {"hit@1": 1.0, "mrr@10": 1.0}),
                                             (True, {"hit@10": 0.0, "ndcg@10": 0.0})])
def test_metrics_are_right_when_the_answer_is_known(tiny_data, tiny_llm_dir, monkeypatch, invert, expected):
    """An oracle scorer ranks the target first (hit@1 = 1) or last of 20 (hit@10 = 0): score_users maps
    the shuffled prompt's scores back to RecBole's rows correctly, without reading the label."""
    install_stub_scorer(monkeypatch, lambda prompt, target: np.array(
        [float((c == target) != invert) for c in prompt.candidates]))
    result = _lrgd(tiny_data, tiny_llm_dir, demo_mode="none")
    for key, value in expected.items():
        assert result.test_result[key] == pytest.approx(value)


def test_baselines_and_lrgd_rank_identical_candidates(tiny_data, tiny_llm_dir):
    lrgd = run_live("LRGD", "tiny", config_dict=_cfg(tiny_data, llm_path=tiny_llm_dir, demo_mode="none"),
                    saved=False)
    sasrec = run_live("SASRec", "tiny", config_dict=_cfg(tiny_data), saved=True)
    pop = run_live("Pop", "tiny", config_dict=_cfg(tiny_data), saved=False)
    sets = [built.test_data.candidate_sets() for built, _ in (lrgd, sasrec, pop)]
    assert lrgd[1].candidates == sasrec[1].candidates == pop[1].candidates  # the results' digests say so too
    assert len(sets[0]) == 12
    for other in sets[1:]:
        assert other.keys() == sets[0].keys()
        for uid in sets[0]:
            np.testing.assert_array_equal(other[uid], sets[0][uid])
    for uid, cands in sets[0].items():
        assert len(np.unique(cands)) == 20  # target + 19 distinct negatives
    assert 0.0 <= sasrec[1].test_result["ndcg@10"] <= 1.0 and 0.0 <= pop[1].test_result["ndcg@10"] <= 1.0


def _assert_clean_error(tmp, match, **kwargs):
    with pytest.raises(LRGDError, match=match) as info:
        run(**kwargs)
    assert "\n" not in str(info.value)
    assert not os.path.exists(os.path.join(tmp, "log")), "an error must not leave a half-written log"


def test_bad_input_is_a_one_line_error_and_writes_nothing(tiny_data, tiny_llm_dir, tmp_path):
    base = _cfg(tiny_data, llm_path=tiny_llm_dir)
    _assert_clean_error(tiny_data, r"unknown dataset 'nope'.*nope\.inter",
                        model="LRGD", dataset="nope", config_dict=base)
    _assert_clean_error(tiny_data, "no title field 'name'",
                        model="LRGD", dataset="tiny", config_dict={**base, "title_field": "name"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval_args: {mode: uni19\n")
    _assert_clean_error(tiny_data, "not valid YAML", model="LRGD", dataset="tiny", config_file_list=[str(bad)],
                        config_dict=base)
    partial = tmp_path / "partial.yaml"
    partial.write_text("eval_args:\n  mode: uni19\n")
    _assert_clean_error(tiny_data, "eval_args in .* is incomplete", model="LRGD", dataset="tiny",
                        config_file_list=[str(partial)], config_dict=base)
    _assert_clean_error(tiny_data, "llm_path .*none': no such file or folder",
                        model="LRGD", dataset="tiny", config_dict={**base, "llm_path": str(tmp_path / "none")})
    _assert_clean_error(tiny_data, "smaller than one user's block",
                        model="LRGD", dataset="tiny", config_dict={**base, "eval_batch_size": 10})
    _assert_clean_error(tiny_data, "must be uniN or popN",
                        model="LRGD", dataset="tiny",
                        config_dict={**base, "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user",
                                                           "order": "TO", "mode": "full"}})
    _assert_clean_error(tiny_data, r"`model_name` \[Bogus\] is not the name of an existing model", model="Bogus",
                        dataset="tiny", config_dict=base)

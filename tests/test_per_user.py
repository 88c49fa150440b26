"""Per-user metrics from RecBole's own evaluation, and the paired bootstrap, on known answers."""
import numpy as np
import pytest
import torch
from conftest import install_stub_scorer, run_live

from recbole_lrgd.evaluator.per_user import ndcg_at, paired_bootstrap


def test_paired_bootstrap_known_answers():
    a = {u: 1.0 for u in range(50)}
    b = {u: 0.0 for u in range(50)}
    assert paired_bootstrap(a, b) == (1.0, 1.0, 1.0, 0.0)
    noisy = {u: float(u % 2) for u in range(200)}
    mean, lo, hi, p = paired_bootstrap(noisy, {u: 0.5 for u in range(200)}, seed=1)
    assert mean == 0.0 and lo < 0 < hi and 0.3 < p < 0.7
    assert ndcg_at({1: 0, 2: 1, 3: 10}) == {1: 1.0, 2: pytest.approx(1 / np.log2(3)), 3: 0.0}


KEYS = {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (1, 5, 10)}


def _cfg(tiny_data, **extra):
    return {"data_path": tiny_data, "eval_users": 8, "use_gpu": False, "state": "WARNING", "eval_batch_size": 100,
            "show_progress": False, "score_cache": False, **extra}


def _assert_means_are_recboles(built, result):
    """Every per-user metric covers the test users (of ``built.test_data``), and its mean is RecBole's reported
    value."""
    per_user = result.test_per_user
    assert set(per_user) == KEYS
    users = set(built.test_data.uid_list.tolist())
    for key, values in per_user.items():
        assert set(values) == users
        assert round(float(np.mean(list(values.values()))), 4) == result.test_result[key], key


def _target_rank(title: str) -> int:
    return int(title.rsplit(" ", 1)[1]) % 7  # "The Item Number 12" -> 5: differs between users


@pytest.mark.parametrize("case", ["by_target", "ties"])
def test_lrgd_per_user_metrics_come_from_recboles_evaluation(tiny_data, tiny_llm_dir, monkeypatch, case):
    """A stub puts each user's target at a rank known from its title, or ties every candidate: the
    per-user values belong to the right users, ties are broken as RecBole's top-k breaks them, and the
    means are RecBole's reported metrics."""
    def score(prompt, target):
        if case == "ties":
            return np.zeros(len(prompt.candidates))
        others = [c for c in prompt.candidates if c != target]
        order = {c: -k for k, c in enumerate(others)}  # a fixed order of the negatives
        return np.array([-_target_rank(target) + 0.5 if c == target else order[c] for c in prompt.candidates])

    install_stub_scorer(monkeypatch, score)
    built, result = run_live("LRGD", "tiny", config_dict=_cfg(tiny_data, llm_path=tiny_llm_dir, demo_mode="none"),
                             saved=False)
    _assert_means_are_recboles(built, result)
    ndcg = result.test_per_user["ndcg@10"]
    if case == "ties":  # counting ties against the target (the old second pass) would give 0 for every user
        assert result.test_result["ndcg@10"] > 0 and len(set(ndcg.values())) > 1
    else:
        ds = built.test_data._dataset
        titles = built.model.titles
        targets = dict(zip(ds.inter_feat[ds.uid_field].tolist(), ds.inter_feat[ds.iid_field].tolist()))
        expected = {u: 1 / np.log2(_target_rank(titles[targets[u]]) + 2) for u in ndcg}
        assert ndcg == pytest.approx(expected) and len(set(expected.values())) > 2


def test_baseline_per_user_metrics_come_from_recboles_evaluation(tiny_data):
    """Pop scores by interaction count, so candidates tie; its per-user values are RecBole's too."""
    built, result = run_live("Pop", "tiny", config_dict=_cfg(tiny_data), saved=False)
    _assert_means_are_recboles(built, result)
    model, data = built.model, built.test_data
    counts = [model.item_cnt[torch.as_tensor(c)].flatten() for c in data.candidate_sets().values()]
    assert any(len(torch.unique(c)) < len(c) for c in counts)  # ties among some user's candidates


def test_benchmark_reports_the_paired_bootstrap():
    from recbole_lrgd.benchmark.report import BOOTSTRAP_PAIRS, bootstrap_lines

    rows = [{"variant": "LRGD-stage1+2", "per_user_ndcg10": {str(u): 1.0 for u in range(10)}},
            {"variant": "LRGD-random", "per_user_ndcg10": {str(u): 0.5 for u in range(10)}}]
    lines = bootstrap_lines(rows, BOOTSTRAP_PAIRS)
    assert lines == ["LRGD-stage1+2 vs LRGD-random: NDCG@10 difference +0.5000, 95% paired bootstrap CI "
                     "[+0.5000, +0.5000] over 10 users (share of resamples <= 0: 0.000)"]

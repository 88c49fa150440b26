"""Per-user ranks from a model's predict, and the paired bootstrap, on known answers."""
import numpy as np
import pytest
from conftest import install_stub_scorer

from recbole_lrgd.evaluator.per_user import ndcg_at, paired_bootstrap, positive_ranks
from recbole_lrgd.quick_start import run


def test_paired_bootstrap_known_answers():
    a = {u: 1.0 for u in range(50)}
    b = {u: 0.0 for u in range(50)}
    assert paired_bootstrap(a, b) == (1.0, 1.0, 1.0, 0.0)
    noisy = {u: float(u % 2) for u in range(200)}
    mean, lo, hi, p = paired_bootstrap(noisy, {u: 0.5 for u in range(200)}, seed=1)
    assert mean == 0.0 and lo < 0 < hi and 0.3 < p < 0.7
    assert ndcg_at({1: 0, 2: 1, 3: 10}) == {1: 1.0, 2: pytest.approx(1 / np.log2(3)), 3: 0.0}


@pytest.mark.parametrize("rank", [0, 4])
def test_positive_ranks_match_recbole(tiny_data, tiny_llm_dir, monkeypatch, rank):
    """A stub that puts the target at a known rank: per-user ranks agree, and their mean NDCG@10 is
    RecBole's ndcg@10."""
    def score(prompt, target):
        others = [c for c in prompt.candidates if c != target]
        order = {c: -k for k, c in enumerate(others)}  # a fixed order of the negatives
        return np.array([-rank + 0.5 if c == target else order[c] for c in prompt.candidates])

    install_stub_scorer(monkeypatch, score)
    result = run("LRGD", "tiny", config_dict={"data_path": tiny_data, "eval_users": 8, "use_gpu": False,
                                               "state": "WARNING", "llm_path": tiny_llm_dir, "demo_mode": "none",
                                               "eval_batch_size": 100, "show_progress": False}, saved=False)
    ranks = positive_ranks(result["model_obj"], result["test_data"])
    assert len(ranks) == 8 and set(ranks.values()) == {rank}
    assert np.mean(list(ndcg_at(ranks).values())) == pytest.approx(result["test_result"]["ndcg@10"], abs=1e-4)


def test_benchmark_reports_the_paired_bootstrap():
    from recbole_lrgd.benchmark import BOOTSTRAP_PAIRS, bootstrap_lines

    rows = [{"variant": "LRGD-stage1+2", "per_user_ndcg10": {str(u): 1.0 for u in range(10)}},
            {"variant": "LRGD-random", "per_user_ndcg10": {str(u): 0.5 for u in range(10)}}]
    lines = bootstrap_lines(rows, BOOTSTRAP_PAIRS)
    assert lines == ["LRGD-stage1+2 vs LRGD-random: NDCG@10 difference +0.5000, 95% paired bootstrap CI "
                     "[+0.5000, +0.5000] over 10 users (share of resamples <= 0: 0.000)"]

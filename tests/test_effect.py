"""EffectD: known answers from stub scorers, and the metric through RecBole's evaluation."""
import numpy as np
import pytest
import torch
from conftest import install_stub_scorer, run_live

from recbole_lrgd.evaluator.effect import effect_per_user, fit_temperature, listwise_loss, target_first
from recbole_lrgd.quick_start import run

C = 20


def analytic_effect(delta):
    """Zero-shot: all 20 scores equal (loss ln 20); with demonstrations the target gains delta."""
    return np.log(C) + np.log(np.exp(delta) / (np.exp(delta) + C - 1))


def test_listwise_loss_and_effect_are_analytic():
    zero = torch.zeros(3, C)
    assert torch.allclose(listwise_loss(zero), torch.full((3,), np.log(C), dtype=torch.float64))
    demo = zero.clone()
    demo[:, 0] = 2.0
    assert torch.allclose(effect_per_user(demo, zero), torch.full((3,), analytic_effect(2.0), dtype=torch.float64))
    assert effect_per_user(zero, zero).abs().max().item() == 0.0
    assert target_first([5.0, 6.0, 7.0], 1).tolist() == [6.0, 5.0, 7.0]


def test_fitted_temperature_scales_with_the_scores():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(200, C, generator=gen)
    scores[:, 0] += 1.0
    t1 = fit_temperature(scores)
    assert fit_temperature(3 * scores) == pytest.approx(3 * t1, rel=1e-3)
    assert listwise_loss(scores, t1).mean() <= listwise_loss(scores, 1.5 * t1).mean()


def _cfg(tiny_data, tiny_llm_dir, **extra):
    cfg = {"data_path": tiny_data, "eval_users": 12, "show_progress": False, "use_gpu": False,
           "eval_batch_size": 100, "llm_path": tiny_llm_dir, "state": "WARNING", "num_demos": 2,
           "metrics": ["Hit", "NDCG", "MRR", "EffectD"]}
    cfg.update(extra)
    return cfg


def _run(tiny_data, tiny_llm_dir, **extra):
    return run("LRGD", "tiny", config_dict=_cfg(tiny_data, tiny_llm_dir, **extra), saved=False)


def _demo_shift(delta):
    def score(prompt, target):
        bump = delta if prompt.demonstrations else 0.0
        return np.array([bump if c == target else 0.0 for c in prompt.candidates])
    return score


@pytest.mark.parametrize("delta", [2.0, -1.5])
def test_effectd_through_recbole_matches_the_analytic_value(tiny_data, tiny_llm_dir, monkeypatch, delta):
    install_stub_scorer(monkeypatch, _demo_shift(delta))
    result = _run(tiny_data, tiny_llm_dir, demo_mode="random").test_result
    assert result["effectd"] == pytest.approx(analytic_effect(delta), abs=1e-4)
    assert result["effectd_pos"] == (1.0 if delta > 0 else 0.0)


def test_zero_shot_mode_gives_exactly_zero(tiny_data, tiny_llm_dir, monkeypatch):
    """No demonstrations: one prompt per user, scored once (no second, zero-shot pass), and EffectD exactly 0."""
    shown, shift = [], _demo_shift(2.0)

    def counted(prompt, target):
        shown.append(len(prompt.demonstrations))
        return shift(prompt, target)

    install_stub_scorer(monkeypatch, counted)
    result = _run(tiny_data, tiny_llm_dir, demo_mode="none")
    assert result.test_result["effectd"] == 0.0 and result.test_result["effectd_pos"] == 0.0
    assert shown == [0] * result.test_users


def test_effectd_as_valid_metric(tiny_data, tiny_llm_dir, monkeypatch):
    install_stub_scorer(monkeypatch, _demo_shift(1.0))
    result = _run(tiny_data, tiny_llm_dir, demo_mode="random", valid_metric="EffectD", valid_users=6)
    assert result.best_valid_score == pytest.approx(analytic_effect(1.0), abs=1e-4)
    assert result.best_valid_result["effectd"] == result.best_valid_score


def test_baselines_skip_effectd(tiny_data):
    result = run("Pop", "tiny", config_dict={"data_path": tiny_data, "eval_users": 12, "use_gpu": False,
                                              "state": "WARNING", "metrics": ["Hit", "EffectD"],
                                              "valid_metric": "EffectD"}, saved=False)
    assert "effectd" not in result.test_result and "hit@10" in result.test_result


def test_probe_effects_use_training_targets_and_never_the_probe_itself(tiny_data, tiny_llm_dir):
    from conftest import StubScorer

    from recbole_lrgd.data.probes import make_probes
    from recbole_lrgd.optimizer.probe_effect import probe_effects, single_demonstration_effects

    built, _ = run_live("LRGD", "tiny", config_dict=_cfg(tiny_data, tiny_llm_dir, demo_mode="random", eval_users=2),
                        saved=False)
    ranker = built.model.ranker
    probes = make_probes(ranker.pool, n_users=4, n_negatives=9, item_num=len(ranker.titles), seed=0,
                         max_his_len=ranker.settings.max_his_len)
    assert len(probes) == 4 and all(len(p.candidates) == 10 for p in probes)
    for p in probes:
        seq = ranker.pool.sequences[p.user]
        assert p.candidates[0] == seq[-1] and np.array_equal(p.history, seq[:-1])
        assert not set(p.candidates[1:]) & set(seq.tolist())

    def bump_target(prompt, target):  # the target gains 1 when some demonstration is shown
        return np.array([(1.0 if prompt.demonstrations else 0.0) if c == target else 0.0 for c in prompt.candidates])

    targets = {tuple(ranker.titles[i] for i in p.history[-ranker.settings.max_his_len:]): ranker.titles[p.candidates[0]]
               for p in probes}
    ranker.scorer = StubScorer(ranker.scorer.tokenizer, targets, bump_target)
    own = probes[0].user
    effects = probe_effects(ranker, probes, [own], 1.0)
    expected = np.log(10) + np.log(np.e / (np.e + 9))
    assert effects[0] == 0.0  # its own sequence was dropped: zero-shot prompt
    np.testing.assert_allclose(effects[1:], expected, atol=1e-9)
    single = single_demonstration_effects(ranker, probes, [own, probes[1].user], 1.0)
    assert single[0][0] == 0.0 and single[1][1] == 0.0 and single[1][0] == pytest.approx(expected)


def test_effectd_over_no_recorded_scores_warns_instead_of_a_silent_nan(caplog):
    """Without LRGD's with/without-demonstration scores (e.g. a trainer other than LRGDTrainer) EffectD
    is NaN, and says why in one warning line."""
    import logging

    from recbole.evaluator.collector import DataStruct

    from recbole_lrgd.evaluator.effect import EffectD

    with caplog.at_level(logging.WARNING):
        result = EffectD({"metric_decimal_place": 4, "effect_temperature": 1.0}).calculate_metric(DataStruct())
    assert np.isnan(result["effectd"]) and np.isnan(result["effectd_pos"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "EffectD" in warnings[0] and "NaN" in warnings[0] and "\n" not in warnings[0]

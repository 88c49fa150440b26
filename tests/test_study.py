"""The study (benchmarks/study*.py): its statistics, its stores and its agreement with RecBole."""
import dataclasses
import json
import os
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import study  # noqa: E402
import study_parts as parts  # noqa: E402
import study_report as report  # noqa: E402
from recbole_lrgd.settings import OptimizerSettings  # noqa: E402


# -- statistics --------------------------------------------------------------------------------
def test_ranks_count_ties_against_the_target_and_ndcg_follows():
    store = {1: np.array([0.5, 0.1, 0.9, 0.5]), 2: np.array([2.0, 1.0, 0.0, -1.0])}
    assert report.target_ranks(store) == {1: 2, 2: 0}
    assert report.ndcg10(store) == {1: pytest.approx(1 / np.log2(4)), 2: 1.0}


def test_effect_is_the_listwise_loss_drop():
    zero = {7: np.log(np.array([0.25, 0.25, 0.5]))}
    with_demos = {7: np.log(np.array([0.5, 0.25, 0.25]))}
    assert report.effects(with_demos, zero)[7] == pytest.approx(np.log(2))


def test_split_half_is_one_without_noise_and_near_zero_with_only_noise():
    rng = np.random.default_rng(0)
    users = range(400)
    clean = [{u: float(k) for u in users} for k in range(10)]
    assert report.split_half(clean, splits=20) == pytest.approx(1.0)
    noise = [{u: float(rng.normal()) for u in users} for _ in range(10)]
    assert abs(report.split_half(noise, splits=50)) < 0.35
    mixed = [{u: k / 10 + float(rng.normal()) for u in users} for k in range(10)]
    assert 0.4 < report.split_half(mixed, splits=50) < 1.0  # signal sd 0.29 per set vs noise sd 0.07: reliable


def test_spearman_ci_of_a_monotone_relation_is_one():
    rho, lo, hi = report.spearman_ci(np.arange(12.0), np.arange(12.0) ** 3)
    assert (rho, lo, hi) == pytest.approx((1.0, 1.0, 1.0))
    rho, lo, hi = report.spearman_ci(np.arange(12.0), -np.arange(12.0))
    assert rho == pytest.approx(-1.0) and hi == pytest.approx(-1.0)


def test_ci_cells_print_as_the_tables_show_them():
    assert report.fmt_ci(0.3275, 0.29941, 0.35583) == "0.3275 [0.2994, 0.3558]"
    assert report.fmt_ci(0.0036, -0.008, 0.01534, sign=True) == "+0.0036 [-0.0080, +0.0153]"
    assert report.fmt_rho((0.4961, 0.0851, -0.7733)) == "+0.496 [+0.085, -0.773]"  # rho: 3 digits, signed


# -- stores and the agreement with RecBole -----------------------------------------------------
@pytest.fixture
def tiny_study(tiny_data, tiny_llm_dir, tmp_path):
    return study.Study("smollm2", "tiny", None, llm_path=tiny_llm_dir, data_path=tiny_data,
                       out=str(tmp_path / "study"), effect_users=10, probes=8)


def test_a_study_of_another_identity_on_the_same_stores_is_one_clear_error(tiny_study, tiny_data, tiny_llm_dir,
                                                                           tmp_path):
    """Another --test_users would score every condition again under its key and overwrite the stores: it stops
    first, naming the option, and leaves the folder as it was."""
    tiny_study.run(parts.zero_shot(), "test", 4)
    before = {n: os.path.getmtime(os.path.join(tiny_study.folder, n)) for n in os.listdir(tiny_study.folder)}
    with pytest.raises(SystemExit, match=r"eval_users: None there, 5 here\); pass the options") as info:
        study.Study("smollm2", "tiny", 5, llm_path=tiny_llm_dir, data_path=tiny_data, out=str(tmp_path / "study"),
                    effect_users=10, probes=8)
    assert "\n" not in str(info.value)
    assert {n: os.path.getmtime(os.path.join(tiny_study.folder, n)) for n in os.listdir(tiny_study.folder)} == before
    again = study.Study("smollm2", "tiny", None, llm_path=tiny_llm_dir, data_path=tiny_data, out=str(tmp_path / "study"),
                        effect_users=10, probes=8)  # the same options: no error
    assert again.identity == tiny_study.identity


def test_two_runs_started_at_once_on_one_folder_both_start(tiny_data, tiny_llm_dir, tmp_path, monkeypatch):
    """The usual way to use both cores is two runs (the fit beside the baselines) on one store folder. A second
    process that writes and moves the identity file while the first is writing its own must not take the first's
    file from under it."""
    real_replace, real_getpid = os.replace, os.getpid
    second = []

    def replace_after_a_second_process_started(src, dst):
        if dst.endswith("identity.json") and not second:
            second.append(None)  # once: the second start's own move passes straight through
            monkeypatch.setattr(os, "getpid", lambda: real_getpid() + 1)  # the other process
            second.append(study.Study("smollm2", "tiny", None, llm_path=tiny_llm_dir, data_path=tiny_data,
                                      out=str(tmp_path / "study"), effect_users=10, probes=8))
            monkeypatch.setattr(os, "getpid", real_getpid)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_a_second_process_started)
    first = study.Study("smollm2", "tiny", None, llm_path=tiny_llm_dir, data_path=tiny_data,
                        out=str(tmp_path / "study"), effect_users=10, probes=8)
    assert first.identity == second[1].identity
    assert [n for n in os.listdir(first.folder) if "tmp" in n] == []
    with open(os.path.join(first.folder, "identity.json")) as f:
        assert json.load(f)["identity"] == first.identity


def test_probes_are_disjoint_from_the_effect_users_and_never_see_their_own_demonstration(tiny_study):
    effect_users = {r[0] for r in tiny_study.tests[:10]}
    probes = [p.user for p in tiny_study.probes]
    assert len(probes) == 8 and not effect_users & set(probes)
    probe = tiny_study.probes[0]
    choice = study.DemoChoice.chosen([(probe.user, 0), (tiny_study.pool.users[0], 0)], False)
    other = tiny_study.pool.demonstration(tiny_study.pool.users[0])
    assert tiny_study.pool.users[0] != probe.user
    shown = tiny_study.prompt(tiny_study.ranker, "probe", probe.user, probe.history, probe.candidates, choice).demonstrations
    assert [d.target for d in shown] == [tiny_study.ranker.titles[other[1]]]
    test_user, history, candidates = tiny_study.tests[0]
    assert len(tiny_study.prompt(tiny_study.ranker, "test", test_user, history, candidates, choice).demonstrations) == 2


def test_copy_bias_populations_score_the_demonstrations_targets_with_and_without_them(tiny_study):
    user, history, candidates = tiny_study.tests[0]
    choice = study.DemoChoice.chosen([(u, 0) for u in tiny_study.pool.users[:2]], False)
    targets = [tiny_study.ranker.titles[tiny_study.pool.demonstration(u)[1]] for u in tiny_study.pool.users[:2]]
    with_demos = tiny_study.prompt(tiny_study.ranker, "targets", user, history, candidates, choice)
    without = tiny_study.prompt(tiny_study.ranker, "targets0", user, history, candidates, choice)
    assert with_demos.candidates == without.candidates == targets
    assert len(with_demos.demonstrations) == 2 and without.demonstrations == ()


def test_a_store_resumes_and_a_changed_key_starts_afresh(tiny_study, monkeypatch):
    first = tiny_study.run(parts.random_set(0), "test", 10)
    assert len(first) == 10
    monkeypatch.setattr(tiny_study.ranker.scorer, "score_many", lambda prompts: pytest.fail("a finished store was rescored"))
    again = tiny_study.run(parts.random_set(0), "test", 10)
    assert all(np.array_equal(first[u], again[u]) for u in first)
    path = os.path.join(tiny_study.folder, "random2-d0-test.npz")
    assert study.load_store(path, {"other": "key"}) == ({}, 0.0)


def test_study_scores_equal_recboles_evaluation_of_the_same_demonstrations(tiny_study, tiny_data, tiny_llm_dir):
    """random2-d0 is the product's demo_mode random (same seed): the study's per-user NDCG@10 must be
    RecBole's own, user for user."""
    from recbole_lrgd.quick_start import run

    result = run("LRGD", "tiny", config_dict={
        "data_path": tiny_data, "llm_path": tiny_llm_dir, "eval_users": None, "demo_mode": "random", "num_demos": 2,
        "seed": study.SEED, "score_cache": False, "show_progress": False, "use_gpu": False, "state": "WARNING"})
    theirs = result.test_per_user["ndcg@10"]
    assert len(theirs) == len(tiny_study.tests)
    ours = report.ndcg10(tiny_study.run(parts.random_set(0), "test", None))
    assert ours.keys() == theirs.keys()
    assert all(ours[u] == pytest.approx(theirs[u], abs=1e-9) for u in ours)


def test_report_tables_from_stores(tiny_study, tmp_path):
    """The claim (b) table is computed from complete sets only; the methods table from shared users."""
    for condition in ([parts.zero_shot()] + [parts.random_set(d) for d in range(5)] + [parts.nearest()]
                      + [parts.anchor_set(0)]):
        tiny_study.run(condition, "probe")
        tiny_study.run(condition, "test", 10)
    stores = report.load_folder(tiny_study.folder)
    table = report.effect_table(stores, min_probes=8, min_test=10)
    assert len(table["rows"]) == 7 and table["probes"] == 8 and table["test"] == 10
    randoms = [f"random2-d{d}" for d in range(5)]
    for key, sets in (("random", randoms), ("global", randoms + ["anchor2-d0"])):  # never per-user nearest
        idx = [i for i, r in enumerate(table["rows"]) if r["condition"] in sets]
        assert table[key + "_sets"] == len(idx) == len(sets)
        rho = spearmanr([table["effect"][i] for i in idx], [table["ndcg"][i] for i in idx])[0]
        np.testing.assert_equal(table["rho_" + key][0], rho)  # nan too, where tiny data ties
    zero = stores[("zero-shot", "probe")][0]
    assert table["effect"][0] == pytest.approx(np.mean(list(report.effects(
        stores[(table["rows"][0]["condition"], "probe")][0], zero).values())))
    assert report.effect_table(stores, min_probes=9, min_test=10) is None  # too few probes: not reported
    assert report.method_table(stores, report.EFFECT_METHODS, min_users=11) is None
    methods = report.method_table(stores, report.EFFECT_METHODS, min_users=10)
    assert methods["sets"]["random2"].shape == (5, 10)
    few = report.effect_table(stores, min_probes=8, min_test=4, users=[r[0] for r in tiny_study.tests[:4]])
    assert few["test"] == 4 and report.effect_table(stores, min_probes=8, min_test=5,
                                                    users=[r[0] for r in tiny_study.tests[:4]]) is None
    assert methods["users"] == 10 and methods["draws"]["random2"] == 5 and methods["draws"]["nearest2"] == 1
    assert methods["effect"]["zero-shot"] == 0.0
    assert methods["effect"]["random2"] == pytest.approx(np.mean([np.mean(list(report.effects(
        stores[(f"random2-d{d}", "test")][0], stores[("zero-shot", "test")][0]).values())) for d in range(5)]))
    page = report.write_report(str(tmp_path / "study"), str(tmp_path / "docs"))
    assert "| smollm2 | tiny | 10 |" in page  # zero-shot row
    identity = json.load(open(os.path.join(tiny_study.folder, "identity.json")))
    assert len(identity["sha256"]) == 64


def test_target_mass_is_the_softmax_share_of_the_appended_items():
    assert report.target_mass(np.log(np.array([1.0, 1.0])), np.log(np.array([2.0]))) == pytest.approx(0.5)


def test_bias_table_groups_draws_and_measures_copy_bias(tiny_study):
    tiny_study.run(parts.zero_shot(), "test", 10)
    for condition in (parts.nested_set(0, 1), parts.nested_set(1, 1)):
        for population in ("test", "targets", "targets0"):
            tiny_study.run(condition, population, 10)
    stores = report.load_folder(tiny_study.folder)
    table = report.setting_table(stores, report.BIAS)
    assert list(table) == ["nested1"] and table["nested1"]["draws"] == 2 and table["nested1"]["users"] == 10
    user = sorted(table["nested1"]["copy_bias"])[0]
    expected = np.mean([report.target_mass(stores[(c, "test")][0][user], stores[(c, "targets")][0][user]) -
                        report.target_mass(stores[("zero-shot", "test")][0][user], stores[(c, "targets0")][0][user])
                        for c in ("nested1-d0", "nested1-d1")])
    assert table["nested1"]["copy_bias"][user] == pytest.approx(expected)


def test_a_prompt_key_condition_scores_otherwise_and_restores_the_ranker(tiny_study):
    base = tiny_study.run(parts.random_set(0), "test", 10)
    listed = tiny_study.run(parts.random_set(0).named("listed", demo_format="listed"), "test", 10)
    summed = tiny_study.run(parts.zero_shot().named("sum", title_score="sum"), "test", 10)
    zero = tiny_study.run(parts.zero_shot(), "test", 10)
    assert all(not np.allclose(base[u], listed[u]) for u in base)
    assert all(np.all(summed[u] < zero[u]) for u in zero)  # sums of >= 2 negative log-probs < their mean
    assert tiny_study.ranker.settings.demo_format == "next_item" and tiny_study.ranker.scorer.title_score == "mean"
    assert os.path.isfile(os.path.join(tiny_study.folder, "listed-random2-d0-test.npz"))


def test_parts_shard_by_condition_and_coverage_counts_finished_stores(tiny_study):
    tasks = study.part_tasks("effect", None, effect_users=10)
    assert [c.name for c, _ in tasks][:3] == ["zero-shot", "random2-d0", "nearest2"]
    assert tasks[0][1] == [("probe", None), ("test", 10)]
    assert study.part_tasks("methods", 7)[0][1] == [("test", 7)]
    study.run_part(tiny_study, "zero-shot", 10)
    tiny_study.run(parts.zero_shot(), "probe")
    identity = json.load(open(os.path.join(tiny_study.folder, "identity.json")))
    cov = report.coverage(report.load_folder(tiny_study.folder), {**identity, "test_users_available": 10})
    # effect: the probe store only (its test users are the nominal 500); methods: all 10 users there are
    assert cov["zero-shot"] == (1, 1) and cov["effect"] == (1, 62) and cov["methods"] == (1, 10)


def test_two_level_diff_known_answers_and_set_spread_widens_it():
    rng = np.random.default_rng(0)
    b = rng.random((1, 300))
    d, lo, hi = report.two_level_diff(b + 0.1, b)
    assert (d, lo, hi) == pytest.approx((0.1, 0.1, 0.1))
    a_one = b + 0.05
    a_spread = np.concatenate([b + 0.0, b + 0.1])  # two sets whose means differ: the same mean offset, more spread
    _, lo1, hi1 = report.two_level_diff(a_one, b)
    _, lo2, hi2 = report.two_level_diff(a_spread, b)
    assert hi2 - lo2 > hi1 - lo1 + 0.05


def test_claim_c_verdict_holds_fails_or_stays_undecided_with_its_power():
    rng = np.random.default_rng(0)
    base = rng.random((1, 400))

    def verdict(gain, zero=-0.05, fits: int = 2, random: bool = True) -> str:
        sets = {"lrgd": base + gain, "zero-shot": base + zero, **({"random2": base} if random else {})}
        return report.verdict_c("lrgd", {"sets": sets, "draws": {"lrgd": fits}, "users": 400})

    assert verdict(0.05).startswith("holds: lrgd (2 fit(s)) beats random2 (+0.0500")
    assert verdict(0.05, fits=1).startswith("holds for this one fit (its seed-to-seed spread is not measured):")
    assert verdict(0.01).startswith("holds (but a gain over random of 0.02 or more is excluded):")
    tie = verdict(0.0)  # random decides the margin: zero-shot (0.05 below) would leave it open
    assert tie.startswith("does not hold (a gain over random of 0.02 or more is excluded): lrgd (2 fit(s)) ties with")
    assert tie.endswith("detected 80% of the time") and "random of 0.000 would" in tie  # an exact tie: no spread
    assert verdict(0.0, zero=0.05).startswith("does not hold (it loses): lrgd (2 fit(s)) ties with random2")
    noisy = verdict(rng.normal(0.0, 0.3, (1, 400)), zero=0.0)  # sd 0.3 over 400 users: the CI passes 0.02 both ways
    assert noisy.startswith("undecided: lrgd") and "loses" not in noisy
    alone = verdict(0.05, random=False)
    assert alone.startswith("undecided (no finished random sets): lrgd (2 fit(s)) beats zero-shot") and "80%" not in alone
    assert verdict(-0.1, random=False).startswith("does not hold (it loses): lrgd (2 fit(s)) loses to zero-shot")
    assert verdict(-0.1, fits=1, random=False).startswith("does not hold (it loses) for this one fit (its seed-to")
    assert report.detectable(-1.96, 1.96) == pytest.approx(2.8)  # 2.8 standard errors


def test_pooled_claim_c_weighs_datasets_alike_and_decides_what_one_dataset_cannot():
    rng = np.random.default_rng(3)
    a, b = rng.random((3, 50)), rng.random((2, 50))
    # the interval the two-level bootstrap gave before pooling existed (its draws, in their order)
    assert report.two_level_diff(a, b) == pytest.approx((-0.03733289873804424, -0.12664346144979297, 0.056691290806372654))
    small, large = rng.random((1, 100)), rng.random((1, 400))
    assert report.pooled_diff([(small + 0.1, small), (large + 0.3, large)]) == pytest.approx((0.2, 0.2, 0.2))  # not 0.26

    def dataset(gain: np.ndarray, base: np.ndarray = large) -> dict:
        return {"sets": {"lrgd": base + gain, "zero-shot": base - 0.05, "random2": base}, "draws": {"lrgd": 1},
                "users": base.shape[1]}

    ties = {name: dataset(n - n.mean()) for name, n in (("one", rng.normal(0.0, 0.25, (1, 400))),
                                                         ("two", rng.normal(0.0, 0.25, (1, 400))))}
    # a true tie on each; one dataset's CI reaches past 0.02, two together exclude it
    assert all(report.verdict_c("lrgd", t).startswith("undecided: lrgd (1 fit(s)) ties with random2") for t in ties.values())
    pooled = report.pooled_verdict_c("lrgd", {**ties, "none": {**dataset(0.0), "sets": {"zero-shot": large}}})
    assert pooled.startswith("does not hold (a gain over random of 0.02 or more is excluded) for these fits (the "
                             "spread between fits of one dataset is not all measured): lrgd (2 fit(s); the mean over "
                             "one, two, each weighing the same, not over datasets in general)")
    assert "on 400+400 users" in pooled and "otherwise" not in pooled
    assert report.pooled_verdict_c("lrgd", {"one": ties["one"]}) is None  # one dataset: its own verdict says it all
    no_random = {**ties["two"], "sets": {k: v for k, v in ties["two"]["sets"].items() if k != "random2"}}
    assert report.pooled_verdict_c("lrgd", {"one": ties["one"], "two": no_random}) is None
    split = report.pooled_verdict_c("lrgd", {"up": dataset(0.06), "down": dataset(-0.06)})  # they cancel out
    assert split.startswith("does not hold") and split.endswith("on its own it decides otherwise on up")


def test_claim_b_verdict_needs_a_noise_ceiling_that_could_show_a_correlation():
    low = {"rho": (-0.13, -0.55, 0.28), "ceiling": 0.37}  # even a perfect predictor shows at most 0.37
    assert report.verdict_b(low).startswith("undecided")
    assert report.verdict_b({**low, "ceiling": 0.9}).startswith("does not hold: rho -0.13, CI excludes rho >= 0.30")
    assert report.verdict_b({**low, "ceiling": 0.58}).startswith("does not hold: rho -0.13, CI excludes rho >= 0.29")
    assert report.verdict_b({**low, "ceiling": float("nan")}).startswith("undecided")  # no ceiling: no bar
    assert report.verdict_b({"rho": (0.5, 0.1, 0.8), "ceiling": 0.6}).startswith("holds")


def test_a_condition_with_a_stored_conditions_prompts_copies_its_scores(tiny_study, monkeypatch):
    first = tiny_study.run(parts.random_set(0), "test", 6)
    scored = []
    real = tiny_study.ranker.scorer.score_many
    monkeypatch.setattr(tiny_study.ranker.scorer, "score_many", lambda prompts: scored.extend(prompts) or real(prompts))
    twin = dataclasses.replace(parts.random_set(0), name="twin")  # the same demonstrations under another name
    copied = tiny_study.run(twin, "test", 6)
    assert scored == [] and sorted(copied) == sorted(first)
    assert all(np.array_equal(copied[u], first[u]) for u in first)
    assert len(tiny_study.run(twin, "test", 8)) == 8 and len(scored) == 2  # users the twin lacks are scored
    os.remove(os.path.join(tiny_study.folder, "random2-d0-test.npz"))
    assert len(tiny_study.run(twin, "test", 8)) == 8 and len(scored) == 2  # the copies are the twin's own now
    tiny_study.run(parts.random_set(1), "test", 6)  # other demonstrations
    tiny_study.run(twin.named("listed", demo_format="listed"), "test", 6)  # the same ones shown otherwise
    tiny_study.run(parts.random_set(0), "probe", 6)  # another population (twin's test users are no probes' twins)
    assert len(scored) == 2 + 6 + 6 + len(tiny_study.probes)


def test_the_same_condition_name_with_other_demonstrations_is_scored_again(tiny_study, monkeypatch):
    users = tiny_study.pool.users
    first = study.Condition("x", lambda st, ranker: (study.DemoChoice.chosen([(users[0], 0)], False), 0.0))
    second = study.Condition("x", lambda st, ranker: (study.DemoChoice.chosen([(users[1], 0)], False), 0.0))
    tiny_study.run(first, "test", 4)
    calls, score = [], tiny_study.ranker.scorer.score_many
    monkeypatch.setattr(tiny_study.ranker.scorer, "score_many", lambda prompts: calls.append(len(prompts)) or score(prompts))
    tiny_study.run(first, "test", 4)
    assert calls == []
    tiny_study.run(second, "test", 4)
    assert sum(calls) == 4


def test_length_prior_is_derived_from_the_sum_and_mean_stores(tiny_study):
    study.run_part(tiny_study, "scorer", None, only="sum-zero-shot")  # --only: that one of the part's six
    assert sorted(os.listdir(tiny_study.folder)) == ["identity.json", "sum-zero-shot-test.npz"]
    summed = tiny_study.run(parts.zero_shot().named("sum", title_score="sum"), "test", 10)
    mean = tiny_study.run(parts.zero_shot(), "test", 10)
    stores = report.with_length_priors(report.load_folder(tiny_study.folder), alphas=(0.0, 0.5, 1.0))
    for u in mean:
        np.testing.assert_allclose(stores[("len0.0-zero-shot", "test")][0][u], summed[u], rtol=1e-12)
        np.testing.assert_allclose(stores[("len1.0-zero-shot", "test")][0][u], mean[u], rtol=1e-6)
    user, _, candidates = tiny_study.tests[0]
    tokens = [len(tiny_study.ranker.scorer.candidate_ids(tiny_study.ranker.titles[i])) for i in candidates]
    np.testing.assert_allclose(stores[("len0.5-zero-shot", "test")][0][user], summed[user] / np.sqrt(tokens))
    table = report.setting_table(stores, report.SCORER, copy_bias=False)
    assert {"zero-shot", "sum-zero-shot", "len0.5-zero-shot"} <= set(table)
    diff = report.base_diff(table, "sum-zero-shot", report.SCORER_PREFIX[1])  # the sum minus the mean, user by user
    sum_ndcg, mean_ndcg = report.ndcg10(summed), report.ndcg10(mean)
    assert diff[0] == pytest.approx(np.mean([sum_ndcg[u] - mean_ndcg[u] for u in mean])) and diff[1] <= diff[0] <= diff[2]
    assert report.base_diff(table, "zero-shot", report.SCORER_PREFIX[1]) is None  # the mean is the base
    without_base = {k: v for k, v in table.items() if k != "zero-shot"}
    assert report.base_diff(without_base, "sum-zero-shot", report.SCORER_PREFIX[1]) is None


def test_the_scorer_part_reads_the_zero_shot_parts_pass_from_the_score_cache(tiny_study, tiny_data, tiny_llm_dir,
                                                                               tmp_path, monkeypatch):
    """The zero-shot part's pass stores every title-score reduction in the study's score cache: the scorer
    part's reductions of the same prompts run no LLM pass, and equal the uncached study's scores."""
    from recbole_lrgd.llm.scorer import LLMScorer

    cached = study.Study("smollm2", "tiny", None, llm_path=tiny_llm_dir, data_path=tiny_data,
                         out=str(tmp_path / "cached"), effect_users=10, probes=8,
                         score_cache_dir=str(tmp_path / "cache"))
    jobs, score_jobs = [], LLMScorer._score_jobs
    monkeypatch.setattr(LLMScorer, "_score_jobs", lambda self, j: jobs.append(len(j)) or score_jobs(self, j))
    study.run_part(cached, "zero-shot", 10)  # the first 10 test users: the scorer part's effect users
    assert sum(jobs) == 10
    study.run_part(cached, "scorer", None, only=".*-zero-shot")
    assert sum(jobs) == 10  # sum and first3: every score from the cache
    for name in ("sum-zero-shot", "first3-zero-shot"):
        keys = {"sum": {"title_score": "sum"}, "first3": {"title_score": "first", "title_score_tokens": 3}}
        fresh = tiny_study.run(parts.zero_shot().named(name.split("-")[0], **keys[name.split("-")[0]]), "test", 10)
        with np.load(os.path.join(cached.folder, f"{name}-test.npz")) as z:
            got = {int(u): v for u, v in zip(z["users"], z["scores"])}
        assert set(got) == set(fresh) and len(got) == 10
        for u in fresh:
            np.testing.assert_allclose(got[u], fresh[u], atol=1e-6)
    jobs.clear()
    study.run_part(cached, "scorer", None, only="sum-random2-d0|random2-d0")  # the mean read from the sum's pass
    assert sum(jobs) == 10
    with np.load(os.path.join(cached.folder, "random2-d0-test.npz")) as z:
        got = {int(u): v for u, v in zip(z["users"], z["scores"])}
    fresh = tiny_study.run(parts.random_set(0), "test", 10)
    assert set(got) == set(fresh)
    for u in fresh:
        np.testing.assert_allclose(got[u], fresh[u], atol=1e-6)


def test_ablation_fits_with_the_part_switched_off_and_is_reported_against_the_full_fit(tiny_study, tmp_path,
                                                                                        monkeypatch):
    names = [c.name for c in parts.ablation_conditions(seeds=1)]
    assert names == ["lrgd-default-s2-perturb_num0-seed2020", "lrgd-default-s2-lambda_std0-seed2020",
                     "lrgd-default-s2-lambda_redundancy0-seed2020", "lrgd-default-s2-lambda_copy0-seed2020",
                     "lrgd-default-s2-lambda_reg0-seed2020", "lrgd-default-s1-seed2020"]
    for condition in (parts.zero_shot(), parts.random_set(0), parts.optimized(2, study.SEED)):
        tiny_study.run(condition, "test", 10)
    import recbole_lrgd.optimizer.two_stage as optimizer

    real, settings = optimizer.DemoOptimizer, []

    def recording(ranker, fit_settings, *args, **kwargs):
        settings.append(fit_settings)
        return real(ranker, fit_settings, *args, **kwargs)
    monkeypatch.setattr(optimizer, "DemoOptimizer", recording)
    study.run_part(tiny_study, "ablation", None, only="lrgd-default-s2-lambda_copy0-seed2020")
    yaml_fit = OptimizerSettings.from_config(tiny_study.config.final_config_dict)
    assert yaml_fit.lambda_copy > 0  # the YAML's weight, which the ablation turns off
    assert settings == [dataclasses.replace(yaml_fit.with_seed(study.SEED), lambda_copy=0)]
    page = report.write_report(str(tmp_path / "study"), str(tmp_path / "docs"))
    assert "ablations of the YAML-default optimizer (10 test users)" in page
    stores = report.load_folder(tiny_study.folder)
    ablated, full = (stores[(c, "test")] for c in ("lrgd-default-s2-lambda_copy0-seed2020", "lrgd-default-s2-seed2020"))
    same = int(ablated[1]["key"]["choice"] == full[1]["key"]["choice"])
    users = sorted(ablated[0])
    diff = np.mean([report.ndcg10(ablated[0])[u] - report.ndcg10(full[0])[u] for u in users])
    assert f"| lrgd-default-s2-lambda_copy0 | 1 | {same}/1 | " in page
    assert f"{diff:+.4f} [" in page.split("| lrgd-default-s2-lambda_copy0 |")[1].splitlines()[0]


def test_confirm_part_compares_nearest4_with_the_default_random_set(tiny_study, tmp_path, monkeypatch):
    monkeypatch.setitem(report.NOMINAL_USERS, "effect", 1)  # so that only the missing effect part keeps its table out
    assert [c.name for c, _ in study.part_tasks("confirm", 10)] == ["zero-shot", "random2-d0", "nearest2", "nearest4"]
    study.run_part(tiny_study, "confirm", None)  # all the test users there are
    stores = report.load_folder(tiny_study.folder)
    ndcg = {c: np.mean(list(report.ndcg10(stores[(c, "test")][0]).values())) for c in ("random2-d0", "nearest4")}
    page = report.write_report(str(tmp_path / "study"), str(tmp_path / "docs"))
    n = len(tiny_study.tests)
    identity = json.load(open(os.path.join(tiny_study.folder, "identity.json")))
    assert report.coverage(stores, identity)["confirm"] == (4, 4)
    row = next(line for line in page.splitlines() if line.startswith(f"| smollm2 | tiny | {n} |")
               and line.count("|") == 10)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[4]) == pytest.approx(ndcg["random2-d0"], abs=1e-4)
    assert float(cells[6]) == pytest.approx(ndcg["nearest4"], abs=1e-4)
    assert cells[7].startswith(f"{ndcg['nearest4'] - ndcg['random2-d0']:+.4f}")
    assert "the effect part's test users and sets (" not in page  # no effect part ran here


def test_stage_1_and_stage_1_plus_2_share_one_fit(tiny_study, monkeypatch):
    """The methods part scores stage 1 and stage 1+2 of one seed: stage 1 is fitted once, in one state file."""
    from recbole_lrgd.optimizer.two_stage import DemoOptimizer

    tiny_study.run(parts.optimized(1, study.SEED), "test", 4)
    monkeypatch.setattr(DemoOptimizer, "stage1", lambda self, state: pytest.fail("stage 1 fitted a second time"))
    tiny_study.run(parts.optimized(2, study.SEED), "test", 4)
    states = sorted(f for f in os.listdir(tiny_study.folder) if f.endswith(".state.json"))
    assert states == [f"lrgd-default-seed{study.SEED}.state.json"]
    seconds = json.load(open(os.path.join(tiny_study.folder, states[0])))["seconds"]
    stores = report.load_folder(tiny_study.folder)
    assert stores[(f"lrgd-default-s1-seed{study.SEED}", "test")][1]["fit_seconds"] == pytest.approx(seconds["stage1"])
    assert stores[(f"lrgd-default-s2-seed{study.SEED}", "test")][1]["fit_seconds"] == pytest.approx(
        seconds["stage1"] + seconds["stage2"])


def test_the_fallback_condition_reads_the_same_fit_and_copies_its_twins_scores(tiny_study, monkeypatch):
    """stage 1+2 with ``fallback_zero_shot`` reads stage 1+2's fit: where the kept set's recorded Effect is below 0
    its prompts are zero-shot's, else stage 1+2's, and either way their stored scores are copied."""
    from recbole_lrgd.optimizer.two_stage import DemoOptimizer

    twins = {"s2": tiny_study.run(parts.optimized(2, study.SEED), "test", 4),
             "zero": tiny_study.run(parts.zero_shot(), "test", 4)}
    assert not all(np.array_equal(twins["s2"][u], twins["zero"][u]) for u in twins["zero"])  # tells them apart
    monkeypatch.setattr(DemoOptimizer, "run", lambda *a, **k: pytest.fail("the fit ran a second time"))
    monkeypatch.setattr(tiny_study.ranker.scorer, "score_many", lambda prompts: pytest.fail("a twin's prompts were scored"))
    fallback = parts.optimized(2, study.SEED, fallback_zero_shot=True)
    assert fallback.name == f"lrgd-default-s2-fallback_zero_shotTrue-seed{study.SEED}"
    path = os.path.join(tiny_study.folder, f"lrgd-default-seed{study.SEED}.state.json")
    state = json.load(open(path))
    for effect, twin in ((-0.5, "zero"), (0.5, "s2")):
        for entry in state["history"] + [state["stage1"]]:  # as if the fit had measured this Effect
            entry["effect"] = effect
        json.dump(state, open(path, "w"))
        for f in os.listdir(tiny_study.folder):
            if f.startswith(fallback.name):
                os.remove(os.path.join(tiny_study.folder, f))
        scores = tiny_study.run(fallback, "test", 4)
        assert all(np.array_equal(scores[u], twins[twin][u]) for u in twins[twin]), twin
    assert sorted(f for f in os.listdir(tiny_study.folder) if f.endswith(".state.json")) == [os.path.basename(path)]


def test_a_shared_fit_waits_for_the_process_fitting_it(tiny_study):
    """While another process holds a fit's lock (as ``Study.fit`` does while it fits), a second fit of the
    same state file waits instead of fitting beside it."""
    import fcntl
    import threading

    condition = parts.optimized(1, study.SEED)
    path = os.path.join(tiny_study.folder, f"lrgd-default-seed{study.SEED}.state.json.lock")
    os.makedirs(tiny_study.folder, exist_ok=True)
    with open(path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        fit = threading.Thread(target=condition.choose, args=(tiny_study, tiny_study.ranker))
        fit.start()
        fit.join(timeout=3)
        assert fit.is_alive()  # still waiting for the lock
        assert not os.path.exists(path[:-len(".lock")])
    fit.join(timeout=120)
    assert not fit.is_alive() and os.path.exists(path[:-len(".lock")])


def test_the_compact_part_fits_with_the_compact_profile(tiny_study, monkeypatch):
    """methods-compact: zero-shot, 3 random draws, nearest and stage 1+2 with study_profile_compact.yaml's keys
    over the YAML's; an unknown profile is an error."""
    import yaml

    import recbole_lrgd.optimizer.two_stage as optimizer

    names = [c.name for c, _ in study.part_tasks("methods-compact", 500)]
    assert names == ["zero-shot", "random2-d0", "random2-d1", "random2-d2", "nearest2", "lrgd-compact-s2-seed2020"]
    settings = []

    def recording(ranker, fit_settings, *args, **kwargs):
        settings.append(fit_settings)
        raise KeyboardInterrupt  # the settings are all this test needs
    monkeypatch.setattr(optimizer, "DemoOptimizer", recording)
    with pytest.raises(KeyboardInterrupt):
        study.run_part(tiny_study, "methods-compact", 4, only="lrgd-compact-.*")
    with open(study.PROFILES["compact"], encoding="utf-8") as f:
        compact = yaml.safe_load(f)
    yaml_fit = OptimizerSettings.from_config(tiny_study.config.final_config_dict)
    assert compact and all(getattr(yaml_fit, k) != v for k, v in compact.items())  # each key changes something
    assert settings == [dataclasses.replace(yaml_fit.with_seed(study.SEED), **compact)]
    with pytest.raises(ValueError, match="unknown optimizer profile 'big'"):
        parts.optimized(2, study.SEED, "big")


def test_a_fit_launched_on_two_processes_equals_one_process_fit(tiny_study, tiny_data, tiny_llm_dir, tmp_path):
    """``study.py fit`` under ``accelerate launch`` shares stage 1 (the pool) between 2 processes: the state holds
    the one-process fit's pool scores and set, and stage 1's process seconds are twice its wall seconds."""
    from conftest import finish, free_port, launch

    name = f"lrgd-default-s2-seed{study.SEED}"
    study.fit_part(tiny_study, "effect", only=name)
    state_file = f"lrgd-default-seed{study.SEED}.state.json"
    one = json.load(open(os.path.join(tiny_study.folder, state_file)))
    out = str(tmp_path / "two")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(free_port()), study.__file__, "fit", "--part=effect", f"--only={name}", "--dataset=tiny", "--test_users=0",
           f"--llm_path={tiny_llm_dir}", f"--data_path={tiny_data}", f"--out={out}", "--effect_users=10",
           "--probes=8"]
    returncode, log = finish(launch(cmd, cwd=tiny_data, env=env))
    assert returncode == 0, log[-4000:]
    assert "unknown config key" not in log  # the study's own flags (--only, --effect_users...) never reach RecBole
    two = json.load(open(os.path.join(out, "smollm2", "tiny", state_file)))
    assert len(one["pool_scores"]) == len(two["pool_scores"]) > 2  # more than one round of 2
    for user, evaluation in one["pool_scores"].items():
        assert two["pool_scores"][user]["objective"] == pytest.approx(evaluation["objective"], abs=1e-9)
    assert two["chosen"] == one["chosen"] == one["stage1"]["set"] == two["stage1"]["set"]
    assert one["stage2"] is None and two["stage2"] is None  # fit stops after stage 1: run does stage 2
    assert one["seconds"]["stage1_process"] == pytest.approx(one["seconds"]["stage1"])
    # the pool's rounds count twice their wall time, the work both processes repeat (the probes' zero-shot) once
    assert two["seconds"]["stage1"] < two["seconds"]["stage1_process"] < 2 * two["seconds"]["stage1"]
    assert two["seconds"]["stage1_demos"] == one["seconds"]["stage1_demos"] == len(one["pool_users"])
    assert log.count(f"{name}: stage 1 ") == 1  # the main process reports it


def test_a_fit_shares_its_pool_through_the_distributed_map(tiny_study, monkeypatch):
    """``Study.fit`` hands stage 1's pool to ``distributed.map_sharded`` (which deals items to the launched
    processes: tests/test_distributed.py), one round of the process count at a time."""
    calls = []

    def recording(fn, items):
        calls.append(list(items))
        return [fn(x) for x in items]
    monkeypatch.setattr(study.dist, "map_sharded", recording)
    study.fit_part(tiny_study, "effect", only=f"lrgd-default-s2-seed{study.SEED}")
    state = json.load(open(os.path.join(tiny_study.folder, f"lrgd-default-seed{study.SEED}.state.json")))
    assert [u for c in calls for u in c] == state["pool_users"] and all(len(c) == 1 for c in calls)


def test_a_finished_fit_is_read_without_waiting_and_left_as_it_is(tiny_study):
    """Stage 1 finished, a stage-1 condition scores while another process holds the lock (fitting stage 2, say),
    and writes nothing to the state; an unfinished stage 2 still waits for the lock."""
    import fcntl
    import threading

    tiny_study.run(parts.optimized(1, study.SEED), "test", 4)
    path = os.path.join(tiny_study.folder, f"lrgd-default-seed{study.SEED}.state.json")
    with open(path + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        before = os.stat(path).st_mtime_ns
        scored = threading.Thread(target=tiny_study.run, args=(parts.optimized(1, study.SEED), "test", 6))
        scored.start()
        scored.join(timeout=120)
        assert not scored.is_alive() and os.stat(path).st_mtime_ns == before
        assert len(report.load_folder(tiny_study.folder)[(f"lrgd-default-s1-seed{study.SEED}", "test")][0]) == 6
        stage2 = threading.Thread(target=parts.optimized(2, study.SEED).choose, args=(tiny_study, tiny_study.ranker))
        stage2.start()
        stage2.join(timeout=3)
        assert stage2.is_alive() and os.stat(path).st_mtime_ns == before  # waiting for the lock, nothing written
    stage2.join(timeout=120)
    assert not stage2.is_alive() and json.load(open(path))["stage2"]["done"]


def test_the_report_names_fits_whose_stage_1_clock_leaves_out_pool_demonstrations(tmp_path):
    folder = tmp_path / "smollm2" / "tiny"
    folder.mkdir(parents=True)
    pool = {str(u): {} for u in range(5)}
    for name, seconds in (("lrgd-a-seed1", {"stage1": 9.0, "stage1_demos": 3}), ("lrgd-b-seed1", {"stage1": 9.0}),
                          ("lrgd-c-seed1", {"stage1": 9.0, "stage1_demos": 5})):
        (folder / f"{name}.state.json").write_text(json.dumps({"pool_scores": pool, "seconds": seconds}))
    assert report.unclocked_note(str(tmp_path)) == (" Fits whose stage-1 seconds cover only some of their pool "
                                                    "demonstrations (the others were scored before that clock "
                                                    "existed): smollm2 tiny lrgd-a-seed1: 3 of 5 clocked.")
    assert report.unclocked_note(str(tmp_path / "nothing")) == ""


def test_the_report_says_how_far_each_unfinished_fit_has_come(tmp_path):
    folder = tmp_path / "smollm2" / "tiny"
    folder.mkdir(parents=True)
    pool = {"pool_users": [1, 2, 3, 4, 5], "pool_scores": {"1": {}, "2": {}, "3": {}}, "settings": {"stage2_steps": 12}}
    states = {"lrgd-a-seed1": {**pool, "stage1": None, "seconds": {"stage1": 50.0, "stage1_process": 100.0}},
              "lrgd-b-seed1": {**pool, "stage1": {"set": [[1, 0]]}, "stage2": {"step": 2, "done": False},
                               "seconds": {"stage1": 1200.0, "stage2": 30.0}},
              "lrgd-c-seed1": {**pool, "stage1": {"set": [[1, 0]]}, "stage2": {"step": 5, "done": True}},
              "lrgd-d-seed1": {**pool, "stage1": {"set": [[1, 0]]}, "stage2": None}}  # a stage-1 fit: finished
    for name, state in states.items():
        (folder / f"{name}.state.json").write_text(json.dumps(state))
    assert report.fits_in_progress(str(tmp_path)) == [
        "- smollm2 tiny lrgd-a-seed1: stage 1 has scored 3 of 5 pool demonstrations (100 s on one process)",
        "- smollm2 tiny lrgd-b-seed1: stage 2 has made 2 of at most 12 moves (1,230 s on one process)"]


def test_gpu_stores_live_apart_and_a_gpu_study_without_one_is_one_clear_error(tiny_data, tiny_llm_dir, tmp_path,
                                                                               monkeypatch):
    import torch

    assert study.store_folder("out", "smollm2", "tiny") == os.path.join("out", "smollm2", "tiny")
    assert study.store_folder("out", "smollm2", "tiny", use_gpu=True) == os.path.join("out", "smollm2-cuda", "tiny")
    assert report.gpu_note({("smollm2", "tiny"): {}}) == ""
    assert report.gpu_note({("smollm2-cuda", "tiny"): {"gpu": "NVIDIA H100"}, ("smollm2", "tiny"): {}}) == (
        " GPU stores (`--use_gpu`, models named `<model>-cuda`): smollm2-cuda on NVIDIA H100.")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "study"
    with pytest.raises(SystemExit, match="--use_gpu, but torch sees no CUDA device here"):
        study.Study("smollm2", "tiny", None, llm_path=tiny_llm_dir, data_path=tiny_data, out=str(out), use_gpu=True)
    assert not out.exists()  # nothing written


def test_a_wider_batch_shares_the_stores_and_is_recorded(tiny_study, tiny_data, tiny_llm_dir, tmp_path, monkeypatch):
    """--user_batch_size only changes how many rows share a forward pass (a GPU wants wide ones): the stores'
    identity stays, so such a run resumes the same stores, and identity.json records the width last used."""
    def recorded() -> int:
        with open(os.path.join(tiny_study.folder, "identity.json")) as f:
            return json.load(f)["user_batch_size"]

    assert tiny_study.ranker.scorer.batching.size == recorded() == 8  # the YAML's
    narrow = tiny_study.run(parts.zero_shot(), "test", 4)
    wide = study.Study("smollm2", "tiny", None, llm_path=tiny_llm_dir, data_path=tiny_data, out=str(tmp_path / "study"),
                       effect_users=10, probes=8, user_batch_size=3)
    assert wide.ranker.scorer.batching.size == recorded() == 3
    assert wide.identity == tiny_study.identity and wide.folder == tiny_study.folder

    def no_scoring(prompts):
        raise AssertionError("a stored user was scored again")

    monkeypatch.setattr(wide.ranker.scorer, "score_many", no_scoring)
    resumed = wide.run(parts.zero_shot(), "test", 4)
    assert sorted(resumed) == sorted(narrow) and all(np.array_equal(resumed[u], narrow[u]) for u in narrow)


def test_the_pool_table_counts_demonstrations_that_help_the_probes(tmp_path):
    folder = tmp_path / "smollm2" / "tiny"
    folder.mkdir(parents=True)
    pool = {"pool_users": [1, 2, 3], "probe_users": [7, 8], "pool_scores": {"1": {"effect": -0.2},
                                                                            "2": {"effect": 0.1},
                                                                            "3": {"effect": -0.5}}}
    states = {"lrgd-study-seed1": {**pool, "stage1": {"effect": 0.05}},
              "lrgd-study-lambda_copy0-seed1": {**pool, "stage1": {"effect": 0.05}},  # an ablation: left out
              "lrgd-compact-seed1": {**pool, "stage1": None}}  # stage 1 not finished: left out
    for name, state in states.items():
        (folder / f"{name}.state.json").write_text(json.dumps(state))
    assert report.pool_rows(str(tmp_path)) == [
        "| smollm2 tiny lrgd-study-seed1 | 3 | 2 | 1 | +0.1000 | -0.2000 | +0.0500 |"]


def test_the_compact_part_is_pooled_over_its_datasets(tiny_study, tmp_path, monkeypatch):
    """Two datasets with the compact methods part pool into one claim (c) verdict for it (one dataset: none); two
    identical datasets pool to the one dataset's own difference."""
    import shutil

    monkeypatch.setitem(report.NOMINAL_USERS, "methods-compact", 4)
    study.run_part(tiny_study, "methods-compact", 4, only="zero-shot|random2-d.|nearest2")
    tiny_study.run(parts.optimized(2, study.SEED), "test", 4)  # stands in for the compact fit (its name below)
    fit = f"lrgd-compact-s2-seed{study.SEED}"
    os.replace(os.path.join(tiny_study.folder, f"lrgd-default-s2-seed{study.SEED}-test.npz"),
               os.path.join(tiny_study.folder, f"{fit}-test.npz"))
    pooled_line = "- Claim (c), smollm2, the compact methods part pooled over datasets: "
    alone = report.write_report(str(tmp_path / "study"), str(tmp_path / "docs"))
    assert "- Claim (c), smollm2 tiny, the compact methods part: " in alone and pooled_line not in alone
    shutil.copytree(tiny_study.folder, os.path.join(os.path.dirname(tiny_study.folder), "tiny2"))
    page = report.write_report(str(tmp_path / "study"), str(tmp_path / "docs")).splitlines()
    own = next((line for line in page if line.startswith("- Claim (c), smollm2 tiny, the compact methods part: ")), "")
    pooled = next((line for line in page if line.startswith(pooled_line)), "")
    assert "the mean over tiny, tiny2" in pooled and "on 4+4 users" in pooled, "\n".join(page[-40:])
    difference = own.split("random2 (")[1].split(" ")[0]  # the same users twice: the same mean difference
    assert pooled.split("random2 (")[1].startswith(difference)
    section = page.index("### The methods parts pooled over datasets")
    assert page[section + 4].startswith("- smollm2, the compact methods part: ")


def test_models_are_compared_with_the_default_llm_per_reduction_on_shared_users():
    hit, miss = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0])  # target first: NDCG@10 1.0, then 0.5
    def stores(scores, conditions):
        return {(c, "test"): (dict(enumerate(scores)), {}) for c in conditions}
    all_stores = {("smollm2", "d"): stores([miss] * 4, ["zero-shot", "first3-zero-shot"]),
                  ("big", "d"): stores([hit] * 2, ["zero-shot", "sum-zero-shot", "first3-zero-shot"]),
                  ("smollm2-cuda", "d"): stores([hit] * 4, ["zero-shot"]),  # another device: not compared
                  ("big", "other"): stores([hit], ["zero-shot"]),  # no smollm2 there: no row
                  ("small", "d"): stores([hit], ["random2-d0"])}  # no zero-shot store: no row
    lines = report.model_comparison(all_stores)
    rows = lines[next(i for i, line in enumerate(lines) if line.startswith("|---")) + 1:]
    # users 0 and 1 are shared; each gains 1 - 0.5; sum has no smollm2 store, so its cell is blank
    assert rows == ["| big | d | +0.5000 [+0.5000, +0.5000] (2) |  | +0.5000 [+0.5000, +0.5000] (2) |"]
    assert report.model_comparison({("smollm2", "d"): all_stores[("smollm2", "d")]}) == []


def test_stage_two_is_measured_against_its_own_stage_one():
    hit, miss = np.array([[1.0, 1.0, 0.5, 0.5]]), np.array([[0.5, 0.5, 0.5, 0.5]])
    moved = {"sets": {"zero-shot": miss, "lrgd-study-s1": miss, "lrgd-study-s2": hit,
                      "lrgd-study-s2-fallback_zero_shotTrue": miss, "random2": np.vstack([miss, hit])}}
    # two of four users gain 0.5 each: +0.25, and resampling users can give 0 to 0.5
    assert report.stage_two_lines(moved) == ["Stage 2's contribution, lrgd-study-s2 − lrgd-study-s1: "
                                             + report.fmt_ci(*report.two_level_diff(hit, miss), sign=True) + "."]
    assert report.two_level_diff(hit, miss)[0] == pytest.approx(0.25)
    kept = {"sets": {"zero-shot": miss, "lrgd-study-s1": hit, "lrgd-study-s2": hit}}
    assert report.stage_two_lines(kept) == ["Stage 2's contribution, lrgd-study-s2 − lrgd-study-s1: "
                                            "0 (stage 2 kept stage 1's set)."]
    assert report.stage_two_lines({"sets": {"zero-shot": miss, "lrgd-compact-s2": hit}}) == []  # no stage 1 stored
    assert report.stage_two_lines({"sets": {"zero-shot": miss, "lrgd-study-s1": hit}}) == []  # stage 1+2 not yet


def test_nearest_lead_is_nearest_minus_stage_two_pooled_over_datasets():
    hit, miss = np.array([[1.0, 1.0, 0.5, 0.5]]), np.array([[0.5, 0.5, 0.5, 0.5]])
    gains = {"sets": {"zero-shot": miss, "nearest2": hit, "lrgd-study-s2": miss,
                      "lrgd-study-s2-fallback_zero_shotTrue": hit, "lrgd-study-s1": hit}}
    ties = {"sets": {"zero-shot": miss, "nearest2": hit, "lrgd-study-s2": hit}}
    # only stage 1+2 itself is compared (not its fallback twin, not stage 1): two of four users gain 0.5
    assert report.nearest_lead({"a": gains}) == [
        "Per-user nearest's lead, nearest2 − lrgd-study-s2: "
        + report.fmt_ci(*report.two_level_diff(hit, miss), sign=True) + "."]
    # two datasets weigh the same: (0.25 + 0) / 2
    [line] = report.nearest_lead({"a": gains, "b": ties}, min_datasets=2)
    assert line.startswith("Per-user nearest's lead, nearest2 − lrgd-study-s2 (the mean over a, b, each weighing "
                           "the same): +0.1250 [")
    assert report.nearest_lead({"a": gains, "c": {"sets": {"zero-shot": miss, "lrgd-study-s2": hit}}},
                               min_datasets=2) == []  # only one dataset has nearest2
    assert report.nearest_lead({"a": {"sets": {"zero-shot": miss, "lrgd-study-s2": hit}}}) == []

"""The two-stage demonstration optimizer, with stub scorers whose good and bad demonstrations are known."""
import json
import logging
import os
import re
import time
import types

import numpy as np
import pytest
import torch

from conftest import StubScorer, run_live, yaml_config

from recbole_lrgd.data.demonstrations import DemonstrationPool
from recbole_lrgd.model import lrgd
from recbole_lrgd.optimizer.objective import Evaluation, copy_bias, drift, redundancy, robust_effect
from recbole_lrgd.optimizer.perturb import perturb_demonstrations, perturb_history
from recbole_lrgd.optimizer.state import OptimizerState, ScoredSet
from recbole_lrgd.optimizer.two_stage import DemoOptimizer
from recbole_lrgd.settings import OptimizerSettings
from recbole_lrgd.quick_start import run

LLM_PATH = [None]  # the tiny LLM's folder (set by the stub fixture): the pre-flight load stays cheap
NUMBER = re.compile(r"Number (\d+)")


def quality(title: str) -> float:
    """The known worth of a demonstration, read from its target's title: some help, some hurt."""
    n = int(NUMBER.search(title).group(1))
    return ((n * 7) % 11) / 5.0 - 1.0


class QualityStub(StubScorer):
    """Scores the first candidate (the probe's target in the optimizer's calls) up by the summed
    quality of the demonstrations shown; counts prompts and can fail after ``fail_after`` calls."""

    def __init__(self, tokenizer, fail_after=None, record=None, delay=0.0):
        self.tokenizer, self.calls, self.fail_after, self.record, self.delay = tokenizer, 0, fail_after, record, delay

    def score(self, prompt):
        self.calls += 1
        time.sleep(self.delay)
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("interrupted by the test")
        if self.record is not None:
            self.record.append(prompt)
        bump = sum(quality(d.target) for d in prompt.demonstrations)
        return np.array([bump if k == 0 else 0.0 for k in range(len(prompt.candidates))])


@pytest.fixture
def stub(monkeypatch, tiny_llm, tiny_llm_dir):
    holder = {"scorer": QualityStub(tiny_llm[1]), "llm_path": tiny_llm_dir}
    monkeypatch.setattr(lrgd, "config_scorer", lambda config: holder["scorer"])  # each model gets the current stub
    LLM_PATH[0] = tiny_llm_dir
    return holder


def _fit_cfg(tiny_data, **extra):
    cfg = {"llm_path": LLM_PATH[0], "data_path": tiny_data, "eval_users": 3, "show_progress": False, "use_gpu": False,
           "eval_batch_size": 100, "state": "WARNING", "demo_mode": "lrgd", "num_demos": 2,
           "pool_size": 10, "probe_users": 8, "probe_negatives": 5, "perturb_num": 1, "lambda_redundancy": 0.0,
           "lambda_copy": 0.0, "lambda_reg": 0.0, "stage2_steps": 6, "stage2_patience": 6}
    cfg.update(extra)
    return cfg


def _fit(tiny_data, **extra):
    """The run's ``RunResult``."""
    return run("LRGD", "tiny", config_dict=_fit_cfg(tiny_data, **extra), saved=False)


def _fit_live(tiny_data, **extra):
    """The run's live objects (``quick_start.Built``: the fitted model) and its ``RunResult``."""
    return run_live("LRGD", "tiny", config_dict=_fit_cfg(tiny_data, **extra), saved=False)


def _chosen(result):
    """The demonstrations the fit chose, as the model shows them (``LRGD.use_demonstrations(fit.choice)``)."""
    return list(result.fit.choice.specs)


def _optimizer(model):
    """The optimizer of a fitted model's config, set up again: the same seeded probes and pool users."""
    return DemoOptimizer(model.ranker, OptimizerSettings.from_config(model.config), len(model.titles))


def _targets(model):
    """Each pool user's demonstration target title."""
    return {u: model.titles[seq[-1]] for u, seq in model.ranker.pool.sequences.items()}


def test_stage1_picks_the_known_good_demonstrations(tiny_data, stub):
    built, result = _fit_live(tiny_data, lrgd_stages=1)
    model = built.model
    assert model.demo_mode == "lrgd" and len(result.global_demo_users) == 2
    assert list(result.global_demo_users) == model.global_demo_users == [u for u, _ in _chosen(result)]
    targets = _targets(model)
    opt = _optimizer(model)
    best = sorted((quality(targets[u]) for u in opt.pool_users), reverse=True)[:2]
    assert sorted((quality(targets[u]) for u in result.global_demo_users), reverse=True) == best
    assert best[0] > 0  # the test means something: the pool holds good demonstrations ...
    assert min(quality(targets[u]) for u in opt.pool_users) < 0  # ... and bad ones


def test_stage2_never_ends_below_stage1_and_the_same_seed_gives_the_same_set(tiny_data, stub, tmp_path):
    a = _fit(tiny_data, demo_state_file=str(tmp_path / "a.json"), lambda_redundancy=0.5)
    b = _fit(tiny_data, demo_state_file=str(tmp_path / "b.json"), lambda_redundancy=0.5)
    assert _chosen(a) == _chosen(b)
    state = json.load(open(tmp_path / "a.json"))
    final = [h for h in state["history"] if h["set"] == state["chosen"]][-1]
    assert final["objective"] >= state["stage1"]["objective"]
    assert state["stage2"]["done"] and state["stage2"]["step"] >= 1
    assert len(state["pool_scores"]) == 10 and len(state["probe_users"]) == 8
    assert not set(state["probe_users"]) & set(int(u) for u in state["pool_scores"])


def test_resume_after_interruption_gives_the_uninterrupted_set(tiny_data, stub, tiny_llm, tmp_path):
    full = _fit(tiny_data, demo_state_file=str(tmp_path / "full.json"))
    full_calls = stub["scorer"].calls
    path = str(tmp_path / "resume.json")
    stub["scorer"] = QualityStub(tiny_llm[1], fail_after=full_calls // 2, delay=0.005)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, demo_state_file=path)
    saved = json.load(open(path))
    assert "chosen" not in saved and 0 < len(saved["pool_scores"])  # stopped part-way, with work saved
    # stage 1 part-way, with the time its saved rounds took: each pool demonstration is 8 probes x 2 prompts
    assert saved["stage1"] is None and saved["seconds"]["stage1"] >= 0.005 * 16 * len(saved["pool_scores"])
    assert saved["seconds"]["stage1_demos"] == len(saved["pool_scores"])
    stub["scorer"] = QualityStub(tiny_llm[1])
    resumed = _fit(tiny_data, demo_state_file=path)
    assert _chosen(resumed) == _chosen(full)
    assert json.load(open(path))["seconds"]["stage1"] > saved["seconds"]["stage1"]  # both runs' time counts
    assert stub["scorer"].calls < full_calls  # the saved pool scores were not recomputed
    stub["scorer"] = QualityStub(tiny_llm[1])
    again = _fit(tiny_data, demo_state_file=path)  # a finished state: reused, fit scores nothing
    assert _chosen(again) == _chosen(full)
    assert stub["scorer"].calls == again.test_users  # one prompt per test user, none for fit


def test_a_resumed_fit_restores_the_probes_zero_shot_scores(tiny_data, stub, tiny_llm, tmp_path, monkeypatch):
    from recbole_lrgd.optimizer.probe_effect import ProbeEffect

    scored = []  # probes scored without demonstrations, per call
    real = ProbeEffect._score_zero_shot
    monkeypatch.setattr(ProbeEffect, "_score_zero_shot", lambda self, pairs: scored.append(len(pairs)) or real(self, pairs))
    full = _fit(tiny_data, demo_state_file=str(tmp_path / "full.json"))
    assert sum(scored) == 8  # the fixed first batch: each of the 8 probes once, its candidates and the pool's targets
    path = str(tmp_path / "resume.json")
    stub["scorer"] = QualityStub(tiny_llm[1], fail_after=stub["scorer"].calls // 2)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, demo_state_file=path)
    saved = json.load(open(path))
    assert saved["stage1"] is None and {u for u, _, _ in saved["zero_shot"]} == set(saved["probe_users"])
    scored.clear()
    stub["scorer"] = QualityStub(tiny_llm[1])
    resumed = _fit(tiny_data, demo_state_file=path)
    assert sum(scored) == 0  # restored, not scored again
    assert _chosen(resumed) == _chosen(full)


class HarmStub(QualityStub):
    """Every demonstration hurts: it moves score off the first candidate (the probe's target)."""

    def score(self, prompt):
        self.calls += 1
        if self.record is not None:
            self.record.append(prompt)
        harm = sum(1.5 + abs(quality(d.target)) for d in prompt.demonstrations)
        return np.array([-harm if k == 0 else 0.0 for k in range(len(prompt.candidates))])


def test_fallback_to_zero_shot_when_every_set_hurts_the_probes(tiny_data, stub, tiny_llm, tmp_path):
    path = str(tmp_path / "state.json")
    stub["scorer"] = HarmStub(tiny_llm[1])
    kept = _fit(tiny_data, demo_state_file=path, lrgd_stages=1)
    assert len(_chosen(kept)) == 2 and json.load(open(path))["stage1"]["effect"] < 0  # the least harmful pair
    shown = []
    stub["scorer"] = HarmStub(tiny_llm[1], record=shown)
    fallen = _fit(tiny_data, demo_state_file=path, lrgd_stages=1, fallback_zero_shot=True)
    assert _chosen(fallen) == [] and json.load(open(path))["chosen"] == []  # the same finished fit, reused
    assert shown and all(not p.demonstrations for p in shown)  # only the test users, each zero-shot
    assert len(shown) == fallen.test_users
    stub["scorer"] = QualityStub(tiny_llm[1])  # some demonstrations help: the fallback leaves the set
    assert len(_chosen(_fit(tiny_data, lrgd_stages=1, fallback_zero_shot=True))) == 2


def test_warm_start_on_new_interactions(tiny_data, stub, tmp_path):
    path = str(tmp_path / "state.json")
    first = _fit(tiny_data, demo_state_file=path)
    chosen = json.load(open(path))["chosen"]
    inter = os.path.join(tiny_data, "tiny", "tiny.inter")
    with open(inter, "a") as f:  # new interactions for two users
        f.write("u0\ti39\t999999\nu1\ti38\t999999\n")
    second = _fit(tiny_data, demo_state_file=path)
    state = json.load(open(path))
    assert state["warm_start_from"] == chosen
    assert state["history"][0]["event"] == "warm start"
    assert len(_chosen(second)) == 2 and len(_chosen(first)) == 2


def test_fit_never_sees_validation_or_test_targets(tmp_path, monkeypatch, stub, tiny_llm, tiny_llm_dir):
    """Every user's last two interactions (validation and test targets) are items nobody else has;
    no prompt the optimizer builds may show them, as history, demonstration or candidate."""
    from conftest import write_tiny_dataset
    folder = write_tiny_dataset(str(tmp_path), name="secret")
    with open(os.path.join(folder, "secret.inter"), "a") as f:
        for u in range(30):
            f.write(f"u{u}\tsv{u}\t{1000 * u + 50}\nu{u}\tst{u}\t{1000 * u + 51}\n")
    with open(os.path.join(folder, "secret.item"), "a") as f:
        for u in range(30):
            f.write(f"sv{u}\tSecret valid {u}\nst{u}\tSecret test {u}\n")
    monkeypatch.chdir(tmp_path)
    record = []
    stub["scorer"] = QualityStub(tiny_llm[1], record=record)
    cfg = {"data_path": str(tmp_path), "eval_users": 2, "use_gpu": False, "eval_batch_size": 100,
           "state": "WARNING", "demo_mode": "lrgd", "pool_size": 8, "probe_users": 8, "probe_negatives": 5,
           "show_progress": False, "llm_path": tiny_llm_dir}
    import recbole_lrgd.trainer as trainer_mod
    seen = []
    original = trainer_mod.LRGDTrainer.optimize_demonstrations

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.extend(record)  # the prompts built by fit (evaluation comes after)
        return out

    monkeypatch.setattr(trainer_mod.LRGDTrainer, "optimize_demonstrations", spy)
    run("LRGD", "secret", config_dict=cfg, saved=False)
    assert len(seen) > 50
    for prompt in seen:
        shown = " ".join([prompt.text, *prompt.candidates])
        assert "Secret" not in shown
    # the secret titles do reach a prompt: the test evaluation's candidates hold the test targets
    assert any("Secret test" in " ".join(p.candidates) for p in record[len(seen):])


def test_collapse_guard_reverts_to_the_best_set_seen():
    """A move that raises the objective (its perturbed copies look great) while the clean Effect falls
    below zero is accepted, then reverted by the guard."""
    table = {
        (1, 2): Evaluation(0.10, 0.10, 0, 0, 0, 0.10),
        "collapse": Evaluation(-0.50, 0.40, 0, 0, 0, 0.40),
    }

    class Fake(DemoOptimizer):
        def evaluate(self, specs):
            users = tuple(sorted(u for u, _ in specs))
            return table[(1, 2)] if users == (1, 2) else table["collapse"]

        def fits_budget(self, specs):
            return True

    # four pool users with demonstrations of the same shape: a history of three items, then a target
    pool = DemonstrationPool({u: np.arange(10 * u + 1, 10 * u + 5) for u in (1, 2, 3, 4)}, 50, max_his_len=50)
    ranker = types.SimpleNamespace(pool=pool, settings=types.SimpleNamespace(max_his_len=50),
                                   scorer=types.SimpleNamespace(mode="likelihood"))
    opt = Fake(ranker, OptimizerSettings.from_config(
        yaml_config(stage2_steps=3, stage2_patience=3, stage2_candidates=2, probe_negatives=2)), 50)
    state = OptimizerState(identity="", identity_context={}, data="", settings={}, probe_users=[], pool_users=[3, 4],
                           stage1=ScoredSet([(1, 0), (2, 0)], table[(1, 2)]),
                           pool_scores={3: Evaluation(0, 0, 0, 0, 0, 1.0), 4: Evaluation(0, 0, 0, 0, 0, 0.9)})
    opt.stage2(state)
    events = [h.event for h in state.history]
    assert "accept" in events and "collapse guard: revert" in events
    assert state.stage2.current == [(1, 0), (2, 0)]


def test_a_state_file_reads_back_as_it_was_written():
    """``OptimizerState`` reads the committed study fits' state files and writes them back unchanged (one written
    before the probes' zero-shot scores were kept gains ``zero_shot: null``), their identities still the digest
    of their settings and context: they resume."""
    import glob

    from recbole_lrgd.optimizer.state import state_identity

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sorted(glob.glob(os.path.join(root, "benchmarks", "out", "study", "*", "*", "*.state.json")))
    assert paths, "the committed study state files are missing"
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        saved = json.loads(text)
        written = json.dumps(OptimizerState.from_json(saved).to_json(), indent=1, sort_keys=True)
        assert written == (text if "zero_shot" in saved else json.dumps({**saved, "zero_shot": None}, indent=1,
                                                                         sort_keys=True)), path
        settings = {k: v for k, v in saved["settings"].items() if k not in ("warm_start", "fallback_zero_shot")}
        assert state_identity(settings, saved["identity_context"]) == saved["identity"], path


def test_perturbations_and_regularizers():
    items = np.arange(100, 200)
    h = tuple(range(10))
    assert perturb_history(h, 0.0, items, np.random.default_rng(0)) == h
    changed = perturb_history(h, 1.0, items, np.random.default_rng(0))
    assert changed != h and len(changed) >= 1
    demos = [((1, 2, 3), 9), ((4, 5, 6), 8)]
    copy = perturb_demonstrations(demos, 0.5, items, [1, 2])
    assert copy == perturb_demonstrations(demos, 0.5, items, [1, 2])  # seeded
    assert any(h not in ((1, 2, 3), (4, 5, 6)) for h, _ in copy)  # a history perturbed at rate 0.5
    assert any(perturb_demonstrations(demos, 0.5, items, [1, s]) != copy for s in range(3, 8))
    assert sorted(t for _, t in perturb_demonstrations(demos, 0.5, items, [3])) == [8, 9]
    assert robust_effect([1.0, 3.0], 0.5) == pytest.approx(2.0 - 0.5)
    assert redundancy([(1, 2), (1, 2)]) == 1.0 and redundancy([(1, 2), (3, 4)]) == 0.0
    zero = np.zeros((2, 4))
    moved = zero.copy()
    moved[:, 3] = 5.0  # all mass goes to the last column, a demonstration's target
    assert copy_bias(moved, zero, [1, 1], 1.0) == pytest.approx(np.exp(5) / (np.exp(5) + 3) - 0.25)
    assert copy_bias(zero, moved, [1, 1], 1.0) == 0.0  # less copying than zero-shot is not penalised
    assert drift(zero, zero, 1.0) == 0.0 and drift(moved, zero, 1.0) > 0


def test_per_user_scope_optimizes_a_library_users_retrieve_from(tiny_data, stub):
    built, result = _fit_live(tiny_data, lrgd_stages=1, lrgd_scope="per_user", library_size=4)
    model = built.model
    library = model.choice.users
    assert model.choice == result.fit.choice and result.fit.per_user  # the model shows what the fit chose
    assert model.choice.per_user and result.global_demo_users == () and len(library) == 4
    targets = _targets(model)
    opt = _optimizer(model)
    best = sorted((quality(targets[u]) for u in opt.pool_users), reverse=True)[:4]
    assert sorted((quality(targets[u]) for u in library), reverse=True) == best
    for user in list(model.ranker.pool.sequences)[:5]:
        chosen = [u for u, _ in model.choice.for_user(model.ranker.pool, user, model.ranker.pool.sequences[user], 2)]
        assert len(chosen) == 2 and set(chosen) <= set(library) and user not in chosen


def test_token_budget_bounds_the_chosen_set(tiny_data, stub):
    built, result = _fit_live(tiny_data, demo_token_budget=250)
    model = built.model
    opt = _optimizer(model)
    chosen = _chosen(result)
    assert 0 < opt.demo_tokens(chosen) <= 250
    single = {u: opt.demo_tokens([(u, 0)]) for u in opt.pool_users}
    assert sum(sorted(single.values(), reverse=True)[:2]) > 250  # the budget really binds here


def _reused(stub, tiny_llm, tiny_data, path, **extra):
    """Fit again with a fresh stub: True when the saved finished state was reused (fit scored nothing)."""
    stub["scorer"] = QualityStub(tiny_llm[1])
    result = _fit(tiny_data, demo_state_file=path, **extra)
    return stub["scorer"].calls == result.test_users


def test_state_is_not_reused_where_auto_resolves_to_another_dtype(tiny_data, stub, tiny_llm, tmp_path, monkeypatch):
    """``auto`` depends on the machine (float32 or bfloat16): the same config text is another model there."""
    from recbole_lrgd.llm import loader

    path = str(tmp_path / "state.json")
    _fit(tiny_data, demo_state_file=path, llm_dtype="auto")
    resolve = loader.resolve_dtype
    here = resolve("auto", "cpu")
    there = torch.float32 if here == torch.bfloat16 else torch.bfloat16
    monkeypatch.setattr(loader, "resolve_dtype", lambda dtype, device: there if dtype in (None, "auto")
                        else resolve(dtype, device))  # auto as on a machine where it means the other dtype
    assert not _reused(stub, tiny_llm, tiny_data, path, llm_dtype="auto")
    assert str(there) in json.load(open(path))["identity_context"]["model"]


def test_state_is_reused_for_the_same_resolved_dtype(tiny_data, stub, tiny_llm, tmp_path):
    from recbole_lrgd.llm.loader import resolve_dtype

    path = str(tmp_path / "state.json")
    _fit(tiny_data, demo_state_file=path, llm_dtype="auto")
    same = str(resolve_dtype("auto", "cpu")).replace("torch.", "")  # what auto means on this machine
    assert _reused(stub, tiny_llm, tiny_data, path, llm_dtype=same)


def test_state_is_not_reused_for_a_model_resaved_under_the_same_path(tiny_data, stub, tiny_llm, tmp_path):
    from recbole_lrgd.llm.tiny import save_tiny_llm

    llm = save_tiny_llm(str(tmp_path / "llm"), seed=0)
    path = str(tmp_path / "state.json")
    _fit(tiny_data, demo_state_file=path, llm_path=llm)
    assert _reused(stub, tiny_llm, tiny_data, path, llm_path=llm)
    save_tiny_llm(llm, seed=1)  # other weights, same folder
    assert not _reused(stub, tiny_llm, tiny_data, path, llm_path=llm)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"identity": "x"}'])
def test_unreadable_state_is_moved_aside_with_a_warning(tiny_data, stub, tmp_path, caplog, text):
    path = tmp_path / "state.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        _fit(tiny_data, demo_state_file=str(path), lrgd_stages=1)
    warnings = [r.getMessage() for r in caplog.records if "optimizer state" in r.getMessage()]
    assert len(warnings) == 1 and "unreadable" in warnings[0] and f"{path}.corrupt" in warnings[0]
    assert (tmp_path / "state.json.corrupt").read_text() == text  # kept for the user to inspect
    assert json.load(open(path))["chosen"]  # and a fresh state written in its place


def test_warm_started_stage2_can_swap_a_demonstration(tiny_data, stub, tiny_llm, tmp_path):
    """The warm start keeps the saved pool scores, so stage 2 can swap in a better pool demonstration
    (without them it could only shorten histories, which this stub's scores ignore)."""
    path = str(tmp_path / "state.json")
    model = _fit_live(tiny_data, demo_state_file=path)[0].model
    state = json.load(open(path))
    worth = {int(u): quality(_targets(model)[int(u)]) for u in state["pool_scores"]}
    worst = sorted(worth, key=lambda u: (worth[u], u))[:2]
    state["chosen"] = [[u, 0] for u in worst]  # a poor saved set, so a swap is worth making
    json.dump(state, open(path, "w"))
    with open(os.path.join(tiny_data, "tiny", "tiny.inter"), "a") as f:  # new interactions
        f.write("u0\ti39\t999999\nu1\ti38\t999999\n")
    stub["scorer"] = QualityStub(tiny_llm[1])
    _fit(tiny_data, demo_state_file=path)
    state = json.load(open(path))
    assert state["warm_start_from"] == [[u, 0] for u in worst] and state["history"][0]["event"] == "warm start"
    accepted = [{u for u, _ in h["set"]} for h in state["history"] if h["event"] == "accept"]
    assert any(users - set(worst) for users in accepted)  # a demonstration from the pool was swapped in
    assert {u for u, _ in state["chosen"]} != set(worst)
    assert state["warm_start_pool_scores"]  # the stage-1 scores, kept through the warm start


def test_settings_come_from_the_yaml_and_a_missing_key_is_an_error():
    from recbole_lrgd.errors import LRGDError

    settings = OptimizerSettings.from_config(yaml_config())
    assert (settings.pool_size, settings.scope, settings.token_budget) == tuple(
        yaml_config()[k] for k in ("pool_size", "lrgd_scope", "demo_token_budget"))
    assert isinstance(OptimizerSettings.from_config(yaml_config(lambda_std=1)).lambda_std, float)
    config = yaml_config()
    del config["demo_token_budget"]
    with pytest.raises(LRGDError, match="no 'demo_token_budget'"):
        OptimizerSettings.from_config(config)


def test_probe_scoring_is_one_batched_call_per_set(tiny_data, stub):
    """A set's clean and perturbed prompts go to the scorer in one call, the probes' zero-shot prompts in
    one more (once); ``probe_effects`` scores its with-demonstration prompts in one call too."""
    from recbole_lrgd.optimizer.probe_effect import probe_effects

    model = _fit_live(tiny_data, lrgd_stages=1)[0].model
    opt = _optimizer(model)
    scorer, calls = stub["scorer"], []
    scorer.score_many = lambda prompts: calls.append(len(prompts)) or [scorer.score(p) for p in prompts]
    n = len(opt.probes)
    opt.evaluate([(opt.pool_users[0], 0)])
    assert calls == [2 * n, n]  # clean + one perturbed copy (perturb_num 1), then the zero-shot batch
    opt.evaluate([(opt.pool_users[1], 0), (opt.pool_users[2], 0)])
    assert calls[2:] == [2 * n]
    calls.clear()
    probe_effects(model.ranker, opt.probes, opt.pool_users[:2], 1.0)
    assert calls == [n, n]

"""The persistent score cache: exact values, no forward on a hit, safe across processes, never fatal."""
import logging
import multiprocessing
import os
import sqlite3

import numpy as np
import pytest
from conftest import scorer_settings

from recbole_lrgd.llm.model_identity import model_identity
from recbole_lrgd.llm.score_cache import ScoreCache, item_key, prompt_digest


def _values(i: int) -> np.ndarray:
    return np.array([i / 3.0, -i * np.pi])


def _writer(path: str, name: str, n: int, barrier) -> None:
    """One process: many small transactions of shared and own keys, reading back as it goes."""
    cache = ScoreCache(path)
    barrier.wait(60)  # before any assert: a failed peer must not leave this one waiting
    assert cache.enabled
    for i in range(n):
        cache.put({f"shared-{i}".encode(): _values(i), f"{name}-{i}".encode(): _values(i + 1000)})
        got = cache.get([f"shared-{i}".encode()])
        assert np.array_equal(got[f"shared-{i}".encode()], _values(i))
    cache.close()


def test_values_round_trip_bit_identical(tmp_path):
    cache = ScoreCache(str(tmp_path / "s.sqlite"))
    values = np.array([1 / 3, -np.inf, np.nan, 5e-324, -0.0, np.nextafter(1.0, 2.0)])
    cache.put({b"k": values, b"empty": []})
    again = ScoreCache(str(tmp_path / "s.sqlite")).get([b"k", b"empty", b"absent"])
    assert again[b"k"].tobytes() == values.tobytes() and again[b"empty"].size == 0 and b"absent" not in again


def test_keys_depend_on_every_part(tiny_llm_dir):
    base = prompt_digest("m", "likelihood", [1, 2, 3])
    assert len({base, prompt_digest("m2", "likelihood", [1, 2, 3]), prompt_digest("m", "verbalizer", [1, 2, 3]),
                prompt_digest("m", "likelihood", [1, 2, 4]), prompt_digest("m", "likelihood", [1, 2, 3], 50)}) == 5
    assert len({item_key(base, [5, 6]), item_key(base, [5, 7]), item_key(base, "A"), item_key(base, "B")}) == 4
    ids = {model_identity(tiny_llm_dir, d, dev) for d, dev in [("float32", "cpu"), ("float64", "cpu"),
                                                               ("float32", "cuda:0")]}
    assert len(ids) == 3
    from recbole_lrgd.llm.loader import resolve_dtype

    same = str(resolve_dtype("auto", "cpu")).replace("torch.", "")  # what auto means on this machine's CPU
    assert model_identity(tiny_llm_dir, "auto", "cpu") == model_identity(tiny_llm_dir, same, "cpu")


def _prompt(tok, mode, candidates=None, user=3):
    from recbole_lrgd.llm.prompt import Demonstration, build_prompt

    cands = candidates or [f"Candidate {'x' * (i % 7)} {i}" for i in range(20)]
    return build_prompt(tok, [Demonstration(("Alpha", "Beta gamma"), "Delta")], ["Epsilon", "Zeta"], cands,
                        seed=(0, user), demo_format="next_item", mode=mode)


def _scorer(tiny_llm, mode, path, **kw):
    from recbole_lrgd.llm.modes import make_scorer

    settings = scorer_settings(**{"scorer_mode": mode, "candidate_batch_size": 7, "user_batch_size": 8,
                                  "max_new_tokens": 8, "title_match_threshold": 0.8, "title_score": "mean",
                                  "title_score_tokens": 3, **kw})
    return make_scorer(*tiny_llm, settings, ScoreCache(str(path)), "tiny")


def _count_forwards(model, calls):
    return model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)


@pytest.mark.parametrize("mode", ["likelihood", "verbalizer", "generate"])
def test_cache_hit_is_bit_identical_and_runs_no_forward(tiny_llm, tmp_path, monkeypatch, mode):
    path = tmp_path / "scores.sqlite"
    first = _scorer(tiny_llm, mode, path)
    if mode == "generate":  # a known output, so a hit that ignored the stored ranking would show
        monkeypatch.setattr(first, "generate", lambda prefix, suffix: "3, 1, 2")
    prompt = _prompt(tiny_llm[1], mode)
    fresh = first.score(prompt)
    assert (first.counts.cache_hits, first.counts.cache_misses) == (0, 20)
    second = _scorer(tiny_llm, mode, path)  # a new scorer (a re-run): only the file carries the scores
    calls = []
    hook = _count_forwards(tiny_llm[0], calls)
    try:
        cached = second.score(prompt)
    finally:
        hook.remove()
    assert calls == []
    assert cached.tobytes() == fresh.tobytes()
    assert (second.counts.cache_hits, second.counts.cache_misses) == (20, 0)
    if mode == "generate":
        shown_first = [prompt.order[k] for k in (2, 0, 1)]
        assert list(np.argsort(-cached)[:3]) == shown_first
        assert second.counts.generated_prompts == 1 and second.counts.unparsed_candidates == 17


def test_partial_hit_computes_once_and_returns_the_cached_scores(tiny_llm, tmp_path):
    """Likelihood prompts do not list candidates: a new candidate list under the same prompt reuses
    the scores already stored and computes (and stores) only what is new."""
    path = tmp_path / "scores.sqlite"
    cands = [f"Item {i}" for i in range(20)]
    stored = _scorer(tiny_llm, "likelihood", path).score(_prompt(tiny_llm[1], "likelihood", cands))
    scorer = _scorer(tiny_llm, "likelihood", path)
    new = cands[:19] + ["Something else"]
    got = scorer.score(_prompt(tiny_llm[1], "likelihood", new))
    assert (scorer.counts.cache_hits, scorer.counts.cache_misses) == (19, 1)
    assert got[:19].tobytes() == stored[:19].tobytes()
    assert len(ScoreCache(str(path))) == 21 * len(scorer.reductions) == 21 * 3  # mean, sum, first: a row each


def test_two_processes_write_one_db_concurrently(tmp_path):
    path = str(tmp_path / "scores.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, name, 150, barrier), daemon=True) for name in ("a", "b")]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    assert [p.exitcode for p in procs] == [0, 0]
    keys = [f"{k}-{i}".encode() for k in ("shared", "a", "b") for i in range(150)]
    got = ScoreCache(path).get(keys)
    assert len(got) == 450
    for i in range(150):
        assert np.array_equal(got[f"shared-{i}".encode()], _values(i))
        assert np.array_equal(got[f"a-{i}".encode()], _values(i + 1000))
        assert np.array_equal(got[f"b-{i}".encode()], _values(i + 1000))


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"this is not an SQLite file" * 200)


def _truncated(path):
    cache = ScoreCache(path)
    cache.put({f"k{i}".encode(): np.arange(50.0) for i in range(400)})
    cache.close()  # the last connection checkpoints the WAL into the main file
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _opener(path: str, barrier, results) -> None:
    barrier.wait(60)
    results.put(ScoreCache(path).enabled)


def test_processes_opening_a_new_db_at_once_all_get_the_cache(tmp_path):
    """Two connections switching a fresh file to WAL at once can get 'database is locked' without SQLite's
    busy wait; the open retries it (before the retry about 1 open in 80 here came back disabled)."""
    ctx = multiprocessing.get_context("spawn")
    enabled = []
    for round_ in range(8):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        path = str(tmp_path / f"race-{round_}.sqlite")
        procs = [ctx.Process(target=_opener, args=(path, barrier, results), daemon=True) for _ in range(4)]
        for p in procs:
            p.start()
        enabled += [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
    assert enabled == [True] * 32


def test_open_retries_a_locked_db_until_it_is_free(tmp_path, monkeypatch):
    real, calls = ScoreCache._connect, []

    def locked_twice(self):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self)
    monkeypatch.setattr(ScoreCache, "_connect", locked_twice)
    cache = ScoreCache(str(tmp_path / "s.sqlite"), busy_timeout_s=5)
    assert cache.enabled and len(calls) == 3


def test_a_db_locked_past_the_timeout_turns_the_cache_off(tmp_path, monkeypatch, caplog):
    def always_locked(self):
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(ScoreCache, "_connect", always_locked)
    with caplog.at_level(logging.WARNING):
        cache = ScoreCache(str(tmp_path / "s.sqlite"), busy_timeout_s=0.3)
    assert not cache.enabled and "is off for this run: database is locked" in caplog.text


@pytest.mark.parametrize("damage", [_garbage, _truncated])
def test_corrupt_file_is_moved_aside_with_a_warning(tmp_path, caplog, damage):
    path = str(tmp_path / "scores.sqlite")
    damage(path)
    with caplog.at_level(logging.WARNING):
        cache = ScoreCache(path)
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert os.path.exists(path + ".corrupt") and cache.enabled
    cache.put({b"k": [1.5]})
    assert cache.get([b"k"])[b"k"].tolist() == [1.5]


class _Failing:
    """Stands in for a connection whose every statement fails with ``exc``."""

    def __init__(self, exc):
        self.exc = exc

    def execute(self, *args):
        raise self.exc

    executemany = execute

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


def test_errors_in_use_never_raise(tmp_path, caplog):
    """Corruption found mid-run: the file is replaced and the cache goes on; a lock that outlasts the
    busy timeout: the cache turns off. Neither reaches the caller."""
    import sqlite3

    path = str(tmp_path / "scores.sqlite")
    cache = ScoreCache(path)
    cache.close()
    cache._conn = _Failing(sqlite3.DatabaseError("database disk image is malformed"))
    with caplog.at_level(logging.WARNING):
        assert cache.get([b"k"]) == {}
    assert cache.enabled and os.path.exists(path + ".corrupt")
    cache.put({b"k": [2.0]})
    assert cache.get([b"k"])[b"k"].tolist() == [2.0]
    cache.close()
    cache._conn = _Failing(sqlite3.OperationalError("database is locked"))
    cache.put({b"j": [1.0]})
    assert not cache.enabled and cache.get([b"k"]) == {}
    assert sum("score cache" in r.getMessage() for r in caplog.records) == 2


def test_unusable_location_turns_the_cache_off_with_a_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with caplog.at_level(logging.WARNING):
        cache = ScoreCache(str(blocker / "scores.sqlite"))
    assert not cache.enabled and any("off" in r.getMessage() for r in caplog.records)
    cache.put({b"k": [1.0]})
    assert cache.get([b"k"]) == {}


# -- through quick_start.run -------------------------------------------------------------------------
def _cfg(tiny_data, tiny_llm_dir, **extra):
    return {"data_path": tiny_data, "eval_users": 8, "show_progress": False, "use_gpu": False,
            "eval_batch_size": 100, "num_demos": 1, "llm_path": tiny_llm_dir, "state": "WARNING", **extra}


def _run(tiny_data, tiny_llm_dir, **extra):
    from recbole_lrgd.quick_start import run

    return run("LRGD", "tiny", config_dict=_cfg(tiny_data, tiny_llm_dir, **extra), saved=False)


def _db(tiny_data):
    return os.path.join(tiny_data, "saved", "score_cache", "scores.sqlite")


def test_rerun_gives_identical_metrics_from_the_cache_alone(tiny_data, tiny_llm_dir, caplog):
    caplog.set_level(logging.INFO)
    first = _run(tiny_data, tiny_llm_dir)
    assert os.path.isfile(_db(tiny_data))
    counts = first.score_counts
    assert (counts.cache_hits, counts.cache_misses) == (0, 160)
    caplog.clear()
    second = _run(tiny_data, tiny_llm_dir)
    assert second.test_result == first.test_result
    counts = second.score_counts
    assert (counts.cache_hits, counts.cache_misses) == (160, 0)
    assert any("160 of 160 scores cached (100.0% hits)" in r.getMessage() for r in caplog.records)


def test_flag_off_writes_no_db_file(tiny_data, tiny_llm_dir):
    from conftest import run_live

    built, _ = run_live("LRGD", "tiny", config_dict=_cfg(tiny_data, tiny_llm_dir, score_cache=False), saved=False)
    assert built.model.ranker.scorer.score_cache is None
    assert not os.path.exists(os.path.join(tiny_data, "saved", "score_cache"))


def test_run_with_a_garbage_cache_file_warns_and_works(tiny_data, tiny_llm_dir, caplog):
    os.makedirs(os.path.dirname(_db(tiny_data)))
    _garbage(_db(tiny_data))
    with caplog.at_level(logging.WARNING):
        result = _run(tiny_data, tiny_llm_dir)
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert 0.0 <= result.test_result["ndcg@10"] <= 1.0
    assert len(ScoreCache(_db(tiny_data))) == 160 * 3  # the fresh file took this run's scores, of each reduction


def test_hub_model_identity_holds_the_cached_revision(tmp_path, monkeypatch):
    """A hub id stands for the commit its ``main`` resolves to in the local cache: a new upload under the
    same name is another model, with other keys."""
    from huggingface_hub import constants

    repo = tmp_path / "models--org--tiny"
    for sha in ("a" * 40, "b" * 40):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    (repo / "refs" / "main").write_text("a" * 40)
    first = model_identity("org/tiny", "float32", "cpu")
    (repo / "refs" / "main").write_text("b" * 40)
    second = model_identity("org/tiny", "float32", "cpu")
    assert "revision:" + "a" * 40 in first and "revision:" + "b" * 40 in second


def test_local_model_identity_covers_weights_and_tokenizer(tmp_path):
    from recbole_lrgd.llm.tiny import save_tiny_llm

    path = save_tiny_llm(str(tmp_path / "m"), seed=0)
    first = model_identity(path, "float32", "cpu")
    save_tiny_llm(path, seed=1)  # other weights under the same path
    second = model_identity(path, "float32", "cpu")
    tokenizer = os.path.join(path, "tokenizer.json")
    os.utime(tokenizer, ns=(os.stat(tokenizer).st_atime_ns, os.stat(tokenizer).st_mtime_ns + 10 ** 9))
    third = model_identity(path, "float32", "cpu")  # a re-saved tokenizer alone
    assert len({first, second, third}) == 3

"""title_score: a likelihood title's score is the mean, the sum or the mean of the first tokens of its
token log-probs; the batched scorer equals the naive reference in each, and each has its own cache keys."""
import os
import sys

import numpy as np
import pytest
import torch

from conftest import scorer_settings, yaml_config

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.prompt import Demonstration, build_prompt, encode_parts, encode_prompt
from recbole_lrgd.llm.score_cache import ScoreCache, item_key, prompt_digest
from recbole_lrgd.llm.modes import make_scorer
from recbole_lrgd.llm.title_score import naive_likelihood, title_logprob
from recbole_lrgd.validate import check_values

MODES = [("mean", None), ("sum", None), ("first", 3)]


def _scorer(tiny_llm, title_score="mean", title_score_tokens=None, mode="likelihood", score_cache=None):
    settings = scorer_settings(scorer_mode=mode, candidate_batch_size=7, user_batch_size=8, max_new_tokens=8,
                               title_match_threshold=0.8, title_score=title_score,
                               title_score_tokens=title_score_tokens)
    return make_scorer(*tiny_llm, settings, score_cache, "tiny")


def _prompts(tok, mode="likelihood"):
    """Three users, two demonstration sets and none (mixed prefixes in one batch); titles of 12..19 tokens
    that differ from their first token on."""
    cands = [f"{i} candidate {'x' * (i % 7)}" for i in range(20)]
    demos = [[Demonstration(("Alpha", "Beta gamma"), "Delta")], [Demonstration(("Omega",), "Psi")], []]
    return [build_prompt(tok, d, [f"Epsilon {u}", "Zeta"], cands, seed=(0, u), demo_format="next_item", mode=mode)
            for u, d in enumerate(demos)]


def _lengths(scorer, prompt):
    return np.array([len(scorer.candidate_ids(c)) for c in prompt.candidates])


def test_title_logprob_known_answers():
    """Two titles, the second padded: the reduction reads unmasked tokens only, the first k for first."""
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -6.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    assert title_logprob(lp, mask, "mean").tolist() == [-2.0, -5.0]
    assert title_logprob(lp, mask, "sum").tolist() == [-6.0, -10.0]
    assert title_logprob(lp, mask, "first", 2).tolist() == [-1.5, -5.0]
    assert title_logprob(lp, mask, "first", 1).tolist() == [-1.0, -4.0]
    assert title_logprob(lp, mask, "first", 9).tolist() == [-2.0, -5.0]
    with pytest.raises(ValueError, match="title_score 'median'"):
        title_logprob(lp, mask, "median")
    with pytest.raises(ValueError, match="title_score_tokens >= 1"):
        title_logprob(lp, mask, "first")


@pytest.mark.parametrize("how,tokens", MODES)
def test_batched_scores_equal_the_naive_reference(tiny_llm, how, tokens):
    """Several prompts of different prefixes, 20 candidates packed 7 to a row: each score equals one
    full-prompt forward per candidate, reduced the same way."""
    scorer = _scorer(tiny_llm, how, tokens)
    prompts = _prompts(tiny_llm[1])
    for prompt, got in zip(prompts, scorer.score_many(prompts), strict=True):
        naive = naive_likelihood(scorer.model, encode_prompt(scorer.tokenizer, prompt),
                                 [scorer.candidate_ids(c) for c in prompt.candidates], how, tokens)
        np.testing.assert_allclose(got, naive, atol=1e-4)
        assert np.ptp(got) > 1e-3


def test_sum_is_mean_times_token_count_and_first_differs(tiny_llm):
    prompts = _prompts(tiny_llm[1])
    mean = _scorer(tiny_llm, "mean").score_many(prompts)
    total = _scorer(tiny_llm, "sum").score_many(prompts)
    first = _scorer(tiny_llm, "first", 3).score_many(prompts)
    for prompt, m, s, f in zip(prompts, mean, total, first, strict=True):
        lengths = _lengths(_scorer(tiny_llm), prompt)
        assert lengths.min() > 3  # so first 3 reads part of every title
        np.testing.assert_allclose(s, m * lengths, rtol=1e-12)
        assert np.abs(f - m).min() > 1e-6


def test_first_with_enough_tokens_is_the_mean(tiny_llm):
    prompts = _prompts(tiny_llm[1])
    longest = max(_lengths(_scorer(tiny_llm), p).max() for p in prompts)
    mean = _scorer(tiny_llm, "mean").score_many(prompts)
    for tokens in (longest, longest + 5):
        for m, f in zip(mean, _scorer(tiny_llm, "first", int(tokens)).score_many(prompts), strict=True):
            assert f.tobytes() == m.tobytes()


def test_cache_keys_differ_between_title_scores(tiny_llm, tmp_path):
    """The mean keeps the keys from before title_score (no setting in the digest); sum and first (per token
    count) have their own; verbalizer labels do not depend on title_score."""
    prompt = _prompts(tiny_llm[1])[0]
    ids = sum(encode_parts(tiny_llm[1], prompt), [])
    cache = ScoreCache(str(tmp_path / "keys.sqlite"))

    def digest(*args, mode="likelihood"):
        scorer = _scorer(tiny_llm, *args, mode=mode, score_cache=cache)
        return scorer._digest(ids, *scorer.score_settings)

    keys = [digest("mean"), digest("sum"), digest("first", 3), digest("first", 4)]
    assert len(set(keys)) == 4
    assert keys[0] == prompt_digest("tiny", "likelihood", ids)
    verbalizer = {digest(*args, mode="verbalizer") for args in (("mean",), ("sum",), ("first", 3))}
    assert verbalizer == {prompt_digest("tiny", "verbalizer", ids)}


def test_a_shared_cache_file_serves_each_title_score_its_own_scores(tiny_llm, tmp_path):
    """One likelihood pass stores every reduction (first with the scorer's token count): a later run with
    another reduction reads them all from the cache, and each equals a fresh, uncached score. first with
    another token count, or a scorer with no token count, computes afresh."""
    path = str(tmp_path / "scores.sqlite")
    prompt = _prompts(tiny_llm[1])[0]
    runs = [("mean", None, 0), ("sum", None, 20), ("first", 4, 0), ("mean", 3, 20), ("first", 3, 0),
            ("sum", None, 20), ("first", 4, 20)]
    got = []
    for how, tokens, hits in runs:
        scorer = _scorer(tiny_llm, how, tokens, score_cache=ScoreCache(path))
        got.append(scorer.score(prompt))
        fresh = _scorer(tiny_llm, how, tokens).score(prompt)
        np.testing.assert_allclose(got[-1], fresh, atol=1e-12)
        assert (scorer.counts.cache_hits, scorer.counts.cache_misses) == (hits, 20 - hits), (how, tokens)
    assert got[5].tobytes() == got[1].tobytes()
    assert np.abs(got[4] - got[0]).min() > 1e-6  # first 3 is its own score, not the mean under its key
    mean_only = _scorer(tiny_llm, "mean", score_cache=ScoreCache(str(tmp_path / "mean.sqlite")))
    assert mean_only.reductions == [("mean", None), ("sum", None)]
    assert _scorer(tiny_llm, "first", 3).reductions == [("first", 3)]  # no cache: its own reduction alone


def test_a_cached_score_keeps_its_first_value_and_verbalizer_keys_have_no_reduction(tiny_llm, tmp_path):
    """A pass stores the other reductions beside its own, but never over a score already cached; a verbalizer
    run (which has no reduction) reads back what it stored, whatever title_score says."""
    prompt = _prompts(tiny_llm[1])[0]
    path = str(tmp_path / "scores.sqlite")
    ids = sum(encode_parts(tiny_llm[1], prompt), [])
    summed = _scorer(tiny_llm, "sum", score_cache=ScoreCache(path))
    keys = [item_key(summed._digest(ids, "sum"), c) for c in summed._items(prompt)]
    ScoreCache(path).put({keys[0]: [123.0]})  # a sum score already there
    _scorer(tiny_llm, "mean", 3, score_cache=ScoreCache(path)).score(prompt)
    again = _scorer(tiny_llm, "sum", score_cache=ScoreCache(path))
    assert again.score(prompt)[prompt.order[0]] == 123.0 and again.counts.cache_misses == 0
    verbalizer = [_scorer(tiny_llm, "sum", mode="verbalizer", score_cache=ScoreCache(path)) for _ in range(2)]
    prompt = _prompts(tiny_llm[1], mode="verbalizer")[0]
    assert verbalizer[0].score(prompt).tobytes() == verbalizer[1].score(prompt).tobytes()
    assert (verbalizer[0].counts.cache_hits, verbalizer[1].counts.cache_misses) == (0, 0)


def test_both_keys_change_the_optimizer_state_identity(tiny_llm_dir):
    """A fit's state is keyed by what decides its scores: a state of another title_score or title_score_tokens is
    another fit's."""
    from recbole_lrgd.optimizer.state import score_context, state_identity

    base = yaml_config(llm_path=tiny_llm_dir, dataset="tiny", device="cpu")
    changes = ({}, {"title_score": "sum"}, {"title_score_tokens": base["title_score_tokens"] + 1})
    assert len({state_identity({}, score_context({**base, **change})) for change in changes}) == 3


@pytest.mark.parametrize("keys,match", [
    ({"title_score": "median"}, "title_score must be one of mean, sum, first, not 'median'"),
    ({"title_score": None}, "title_score must be one of mean, sum, first, not None"),
    ({"title_score_tokens": 0}, "title_score_tokens must be a positive integer, not 0"),
    ({"title_score_tokens": 2.5}, "title_score_tokens must be a positive integer, not 2.5"),
    ({"title_score_tokens": True}, "title_score_tokens must be a positive integer, not True"),
])
def test_bad_values_are_one_line_errors(keys, match):
    with pytest.raises(LRGDError, match=match) as info:
        check_values(yaml_config(**keys))
    assert "\n" not in str(info.value)
    check_values(yaml_config(title_score="first", title_score_tokens=1))


def test_a_bad_title_score_stops_the_run_before_anything_is_written(tiny_data, tiny_llm_dir, monkeypatch):
    import recbole_lrgd.quick_start as quick_start

    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py"])
    monkeypatch.setattr(quick_start, "load_config_llm", lambda config: pytest.fail("the LLM was loaded"))
    with pytest.raises(LRGDError, match="title_score must be one of mean, sum, first, not 'sum '"):
        quick_start.run("LRGD", "tiny", config_dict={"data_path": tiny_data, "llm_path": tiny_llm_dir,
                                                     "use_gpu": False, "title_score": "sum "}, saved=False)
    assert not os.path.exists("log") and not os.path.exists("saved")


def test_a_run_with_sum_scores_otherwise_than_with_mean(tiny_data, tiny_llm_dir, monkeypatch):
    """Two runs on the tiny dataset sharing one score cache (the default): the mean's run stored the sum
    too, so the sum's run reads every score from the cache, and they are the sum's, not the mean's."""
    from recbole_lrgd.model.lrgd import LRGD
    from recbole_lrgd.quick_start import run

    recorded, original = [], LRGD.score_users

    def score_users(self, *args, **kwargs):
        got = original(self, *args, **kwargs)
        recorded[-1].append(got[0])
        return got

    monkeypatch.setattr(LRGD, "score_users", score_users)
    results = {}
    for how in ("mean", "sum"):
        recorded.append([])
        cfg = {"data_path": tiny_data, "eval_users": 12, "show_progress": False, "use_gpu": False,
               "eval_batch_size": 100, "llm_path": tiny_llm_dir, "state": "WARNING", "num_demos": 2,
               "demo_mode": "random", "metrics": ["Hit", "NDCG", "MRR"], "title_score": how}
        results[how] = run("LRGD", "tiny", config_dict=cfg, saved=False)
        counts = results[how].score_counts
        assert (counts.cache_hits == 0) if how == "mean" else (counts.cache_misses == 0 < counts.cache_hits)
    mean, total = np.concatenate(recorded[0]), np.concatenate(recorded[1])
    assert mean.shape == total.shape and mean.size > 0
    assert np.all(total < mean)  # a title of n >= 2 tokens: sum = n * mean < mean, log-probs being < 0

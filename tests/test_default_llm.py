"""LRGD with the real default LLM (SmolLM2-135M-Instruct) on a small ml-100k slice."""
import pytest
from conftest import scorer_settings

from recbole_lrgd.quick_start import run

pytestmark = pytest.mark.default_llm


def test_default_llm_on_ml100k_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {"eval_users": 4, "demo_mode": "random", "num_demos": 1, "max_his_len": 5, "show_progress": False, "use_gpu": False,
           "state": "WARNING", "score_cache": False}  # the second run must really score
    first = run("LRGD", "ml-100k", config_dict=cfg, saved=False)
    second = run("LRGD", "ml-100k", config_dict=cfg, saved=False)
    assert first.test_users == 4
    assert first.test_result == second.test_result
    assert first.global_demo_users == second.global_demo_users
    assert 0.0 <= first.test_result["ndcg@10"] <= 1.0


def test_default_llm_cached_scores_equal_naive_scores():
    import numpy as np

    from recbole_lrgd.llm.loader import load_llm
    from recbole_lrgd.llm.prompt import Demonstration, build_prompt, encode_prompt
    from recbole_lrgd.llm.modes import make_scorer
    from recbole_lrgd.llm.title_score import naive_likelihood

    model, tok = load_llm(None, device="cpu", dtype="float32")
    scorer = make_scorer(model, tok, scorer_settings(scorer_mode="likelihood", candidate_batch_size=8,
                                                     user_batch_size=8, title_score="mean"))
    demos = [Demonstration(("Toy Story (1995)", "Heat (1995)"), "Fargo (1996)")]
    cands = ["Star Wars (1977)", "Babe (1995)", "Casino (1995)", "Jumanji (1995)", "Sabrina (1995)",
             "GoldenEye (1995)", "Braveheart (1995)", "Apollo 13 (1995)", "Twelve Monkeys (1995)", "Clueless (1995)"]
    for user in range(2):  # the second user reuses the first one's prefix cache
        prompt = build_prompt(tok, demos, ["Scream (1996)", f"Evita ({1996 + user})"], cands, seed=(0, user),
                              mode="likelihood", demo_format="next_item")
        cached = scorer.score(prompt)
        naive = naive_likelihood(model, encode_prompt(tok, prompt), [scorer.candidate_ids(c) for c in cands])
        np.testing.assert_allclose(cached, naive, atol=1e-4)


def test_default_llm_batched_users_equal_naive_scores():
    """score_many on SmolLM2: users of one demonstration prefix in one padded forward pass score as
    the naive full-prompt-per-candidate path and as score()."""
    import numpy as np

    from recbole_lrgd.llm.loader import load_llm
    from recbole_lrgd.llm.prompt import Demonstration, build_prompt, encode_parts, encode_prompt
    from recbole_lrgd.llm.modes import make_scorer
    from recbole_lrgd.llm.title_score import naive_likelihood

    model, tok = load_llm(None, device="cpu", dtype="float32")
    scorer = make_scorer(model, tok, scorer_settings(scorer_mode="likelihood", candidate_batch_size=8,
                                                     user_batch_size=4, title_score="mean"))
    demos = [Demonstration(("Toy Story (1995)", "Heat (1995)"), "Fargo (1996)")]
    cands = ["Star Wars (1977)", "Babe (1995)", "Casino (1995)", "Jumanji (1995)", "Sabrina (1995)",
             "Twelve Monkeys (1995)"]
    histories = [["Scream (1996)"], ["Evita (1996)", "Heat (1995)", "Contact (1997)"],
                 ["Titanic (1997)", "Scream (1996)"], ["Fargo (1996)"] * 5]
    prompts = [build_prompt(tok, demos, h, cands, seed=(0, u),
                            mode="likelihood", demo_format="next_item") for u, h in enumerate(histories)]
    assert len({len(encode_parts(tok, p)[1]) for p in prompts}) > 1  # rows of different lengths: padding
    assert len({tuple(encode_parts(tok, p)[0]) for p in prompts}) == 1  # one shared prefix: one batch
    batched = scorer.score_many(prompts)
    for prompt, got in zip(prompts, batched, strict=True):
        naive = naive_likelihood(model, encode_prompt(tok, prompt), [scorer.candidate_ids(c) for c in cands])
        np.testing.assert_allclose(got, naive, atol=1e-4)
        np.testing.assert_allclose(got, scorer.score(prompt), atol=1e-4)

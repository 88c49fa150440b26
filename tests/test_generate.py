"""Generate mode: the ranked-list parser (pure functions) and a run that reports its parse failures."""
import numpy as np
import pytest

from recbole_lrgd.llm.generate import (complete_ranking, match_title, parse_ranking, ranking_scores,
                                       split_entries)

TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Usual Suspects, The (1995)"]


@pytest.mark.parametrize("text", ["3, 1, 2", "3\n1\n2", "3.\n1.\n2.", "[3] [1] [2]", "[3]\n[1]\n[2]",
                                  "(3) > (1) > (2)", "Ranking: 3, 1, 2", "- 3\n- 1\n- 2", "#3\nCandidate 1\n2)"])
def test_indices_in_any_common_format(text):
    assert parse_ranking(text, TITLES) == [2, 0, 1]


def test_titles_with_typos_case_and_commas():
    text = "fargo (1996)\nToy Stroy (1995)\nThe usual suspects is great: Usual Suspects, The (1995)\nHeat (1995)"
    assert parse_ranking(text, TITLES) == [2, 0, 3, 1]


def test_a_title_without_its_year_is_that_title():
    """SmolLM2 copies ml-100k titles without the year: 'Heat' is 'Heat (1995)', not candidate 3."""
    assert parse_ranking("3. Heat\n1. fargo", TITLES) == [1, 2]


def test_a_title_beats_the_models_own_rank_numbers():
    """'1. Fargo (1996)' is the model numbering its answer: the title decides, not the 1."""
    assert parse_ranking("1. Fargo (1996)\n2. Heat (1995)", TITLES) == [2, 1]


def test_number_then_unknown_text_falls_back_to_the_number():
    assert parse_ranking("2. A film I made up\n4. Another one", TITLES) == [1, 3]


def test_a_title_starting_with_a_number_is_a_title():
    titles = [f"Film {k}" for k in range(15)]
    titles[3] = "12 Angry Men (1957)"
    assert parse_ranking("12 Angry Men (1957)\n12", titles) == [3, 11]


def test_duplicates_and_out_of_range_are_ignored():
    assert parse_ranking("2, 2, 0, 9, 1, 2, 17, 1", TITLES) == [1, 0]
    assert parse_ranking("Heat (1995)\n2\nheat (1995)", TITLES) == [1]


def test_fuzzy_threshold_is_respected():
    assert match_title("Toy Stroy (1995)", TITLES, threshold=0.8) == 0
    assert match_title("Toy Stroy (1995)", TITLES, threshold=0.99) is None
    assert match_title("watch Item Number 12 now", ["Item Number 1", "Item Number 12"]) == 1


def test_nothing_parseable_keeps_the_shown_order():
    assert parse_ranking("I think the user would like a comedy.", TITLES) == []
    assert parse_ranking("", TITLES) == []
    np.testing.assert_array_equal(ranking_scores([], 4), [4.0, 3.0, 2.0, 1.0])


def test_unmentioned_candidates_rank_last_in_shown_order():
    assert complete_ranking([2, 0], 5) == [2, 0, 1, 3, 4]
    np.testing.assert_array_equal(ranking_scores([2, 0], 5), [4.0, 3.0, 5.0, 2.0, 1.0])


def test_split_entries_keeps_title_lines_whole():
    assert split_entries("1. Usual Suspects, The (1995)\n\n2, 3") == ["1. Usual Suspects, The (1995)", "2", "3"]


def test_generate_prompt_numbers_the_shown_candidates():
    from recbole_lrgd.llm.prompt import RANKING_QUESTION, build_prompt
    from recbole_lrgd.llm.tiny import make_tokenizer

    prompt = build_prompt(make_tokenizer(), [], ["Heat (1995)"], TITLES, seed=(0, 1), mode="generate")
    shown = [TITLES[i] for i in prompt.order]
    assert prompt.labels == ["1", "2", "3", "4"]
    assert "\n".join(f"{k}. {t}" for k, t in enumerate(shown, 1)) in prompt.text
    assert RANKING_QUESTION in prompt.text


# -- the scorer and a whole run ----------------------------------------------------------------------
def test_scores_follow_the_parsed_ranking_in_caller_order(tiny_llm, monkeypatch):
    from recbole_lrgd.llm.prompt import build_prompt
    from recbole_lrgd.llm.scorer import LLMScorer

    scorer = LLMScorer(*tiny_llm, "generate", max_new_tokens=4)
    prompt = build_prompt(tiny_llm[1], [], ["Heat (1995)"], TITLES, seed=(0, 1), mode="generate")
    shown = [TITLES[i] for i in prompt.order]
    monkeypatch.setattr(scorer, "generate", lambda prefix, suffix: f"2\n{shown[3]}")
    scores = scorer.score(prompt)
    best_first = [TITLES[i] for i in np.argsort(-scores)]
    assert best_first == [shown[1], shown[3], shown[0], shown[2]]
    counts = scorer.counts
    assert (counts.generated_prompts, counts.failed_prompts, counts.unparsed_candidates) == (1, 0, 2)


def test_greedy_generation_reuses_and_restores_the_shared_prefix(tiny_llm):
    """Generating on the cached prefix gives the plain model.generate text, and leaves that cache intact."""
    import torch

    from recbole_lrgd.llm.prompt import Demonstration, build_prompt, encode_parts
    from recbole_lrgd.llm.scorer import LLMScorer

    model, tok = tiny_llm
    scorer = LLMScorer(model, tok, "generate", max_new_tokens=12)
    prompt = build_prompt(tok, [Demonstration(("Alpha",), "Beta")], ["Gamma"], TITLES, seed=(0, 2), mode="generate")
    prefix, suffix = encode_parts(tok, prompt)
    for _ in range(2):
        text = scorer.generate(prefix, suffix)
        (cache, _), = scorer._prefixes.values()
        assert cache.get_seq_length() == len(prefix)
    ids = torch.tensor([prefix + suffix])
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                           generation_config=scorer._greedy_config())
    assert text == tok.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(plain[0]) - ids.shape[1] == 12  # the random model never stops: the budget does


def _run(tiny_data, tiny_llm_dir, **extra):
    from recbole_lrgd.quick_start import run

    cfg = {"data_path": tiny_data, "eval_users": 8, "show_progress": False, "use_gpu": False,
           "eval_batch_size": 100, "num_demos": 1, "llm_path": tiny_llm_dir, "state": "WARNING",
           "scorer_mode": "generate", "max_new_tokens": 8, "score_cache": False, **extra}
    return run("LRGD", "tiny", config_dict=cfg, saved=False)


def test_generate_run_end_to_end_returns_the_parse_failure_rate(tiny_data, tiny_llm_dir):
    result = _run(tiny_data, tiny_llm_dir)
    counts = result["model_obj"].score_counts()
    assert counts.generated_prompts == 8
    assert result["test_result"]["generate_parse_failure"] == counts.failed_prompts / 8
    assert result["test_result"]["generate_unparsed"] == counts.unparsed_candidates / 160
    assert 0.0 <= result["test_result"]["ndcg@10"] <= 1.0


def test_parse_failure_rates_count_prompts_and_candidates(tiny_data, tiny_llm_dir, monkeypatch):
    """Half the outputs name one candidate, half name none: 50% of prompts fail, 195 of 200 candidates unparsed."""
    from recbole_lrgd.llm.scorer import LLMScorer

    outputs = iter(["1", "no idea"] * 5)
    monkeypatch.setattr(LLMScorer, "generate", lambda self, prefix, suffix: next(outputs))
    result = _run(tiny_data, tiny_llm_dir, eval_users=10)
    assert result["test_result"]["generate_parse_failure"] == pytest.approx(0.5)
    assert result["test_result"]["generate_unparsed"] == pytest.approx(195 / 200)

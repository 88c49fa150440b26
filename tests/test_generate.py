"""Generate mode: the ranked-list parser (pure functions) and a run that reports its parse failures."""
import numpy as np
import pytest
from conftest import scorer_settings

from recbole_lrgd.llm.generate import (complete_ranking, match_title, parse_ranking, ranking_scores,
                                       split_entries)

TITLES = ["Toy Story (1995)", "Heat (1995)", "Fargo (1996)", "Usual Suspects, The (1995)"]
THRESHOLD = 0.8  # the YAML's title_match_threshold


@pytest.mark.parametrize("text", ["3, 1, 2", "3\n1\n2", "3.\n1.\n2.", "[3] [1] [2]", "[3]\n[1]\n[2]",
                                  "(3) > (1) > (2)", "Ranking: 3, 1, 2", "- 3\n- 1\n- 2", "#3\nCandidate 1\n2)"])
def test_indices_in_any_common_format(text):
    assert parse_ranking(text, TITLES, THRESHOLD) == [2, 0, 1]


def test_titles_with_typos_case_and_commas():
    text = "fargo (1996)\nToy Stroy (1995)\nThe usual suspects is great: Usual Suspects, The (1995)\nHeat (1995)"
    assert parse_ranking(text, TITLES, THRESHOLD) == [2, 0, 3, 1]


def test_a_title_without_its_year_is_that_title():
    """SmolLM2 copies ml-100k titles without the year: 'Heat' is 'Heat (1995)', not candidate 3."""
    assert parse_ranking("3. Heat\n1. fargo", TITLES, THRESHOLD) == [1, 2]


def test_a_title_beats_the_models_own_rank_numbers():
    """'1. Fargo (1996)' is the model numbering its answer: the title decides, not the 1."""
    assert parse_ranking("1. Fargo (1996)\n2. Heat (1995)", TITLES, THRESHOLD) == [2, 1]


def test_number_then_unknown_text_falls_back_to_the_number():
    assert parse_ranking("2. A film I made up\n4. Another one", TITLES, THRESHOLD) == [1, 3]


def test_a_title_starting_with_a_number_is_a_title():
    titles = [f"Film {k}" for k in range(15)]
    titles[3] = "12 Angry Men (1957)"
    assert parse_ranking("12 Angry Men (1957)\n12", titles, THRESHOLD) == [3, 11]


def test_duplicates_and_out_of_range_are_ignored():
    assert parse_ranking("2, 2, 0, 9, 1, 2, 17, 1", TITLES, THRESHOLD) == [1, 0]
    assert parse_ranking("Heat (1995)\n2\nheat (1995)", TITLES, THRESHOLD) == [1]


def test_fuzzy_threshold_is_respected():
    assert match_title("Toy Stroy (1995)", TITLES, threshold=0.8) == 0
    assert match_title("Toy Stroy (1995)", TITLES, threshold=0.99) is None
    assert match_title("watch Item Number 12 now", ["Item Number 1", "Item Number 12"], THRESHOLD) == 1


def test_nothing_parseable_keeps_the_shown_order():
    assert parse_ranking("I think the user would like a comedy.", TITLES, THRESHOLD) == []
    assert parse_ranking("", TITLES, THRESHOLD) == []
    np.testing.assert_array_equal(ranking_scores([], 4), [4.0, 3.0, 2.0, 1.0])


def test_unmentioned_candidates_rank_last_in_shown_order():
    assert complete_ranking([2, 0], 5) == [2, 0, 1, 3, 4]
    np.testing.assert_array_equal(ranking_scores([2, 0], 5), [4.0, 3.0, 5.0, 2.0, 1.0])


def test_split_entries_keeps_title_lines_whole():
    assert split_entries("1. Usual Suspects, The (1995)\n\n2, 3") == ["1. Usual Suspects, The (1995)", "2", "3"]


def test_generate_prompt_numbers_the_shown_candidates():
    from recbole_lrgd.llm.prompt import RANKING_QUESTION, build_prompt
    from recbole_lrgd.llm.tiny import make_tokenizer

    prompt = build_prompt(make_tokenizer(), [], ["Heat (1995)"], TITLES, seed=(0, 1),
                          demo_format="next_item", mode="generate")
    shown = [TITLES[i] for i in prompt.order]
    assert prompt.labels == ["1", "2", "3", "4"]
    assert "\n".join(f"{k}. {t}" for k, t in enumerate(shown, 1)) in prompt.text
    assert RANKING_QUESTION in prompt.text


# -- the scorer and a whole run ----------------------------------------------------------------------
def _scorer(tiny_llm, max_new_tokens, **kw):
    from recbole_lrgd.llm.modes import make_scorer

    settings = scorer_settings(**{"scorer_mode": "generate", "candidate_batch_size": 20, "user_batch_size": 8,
                                  "max_new_tokens": max_new_tokens, "title_match_threshold": THRESHOLD,
                                  "title_score": "mean", "title_score_tokens": 3, **kw})
    return make_scorer(*tiny_llm, settings)


def test_scores_follow_the_parsed_ranking_in_caller_order(tiny_llm, monkeypatch):
    from recbole_lrgd.llm.prompt import build_prompt

    scorer = _scorer(tiny_llm, max_new_tokens=4)
    prompt = build_prompt(tiny_llm[1], [], ["Heat (1995)"], TITLES, seed=(0, 1),
                          demo_format="next_item", mode="generate")
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

    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, max_new_tokens=12)
    prompt = build_prompt(tok, [Demonstration(("Alpha",), "Beta")], ["Gamma"], TITLES, seed=(0, 2),
                          demo_format="next_item", mode="generate")
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


def test_generate_scorer_ranks_as_plain_generation_of_the_whole_prompt(tiny_llm):
    """Users of two prefixes: each output equals model.generate on the full prompt (no cache reused), and
    each score the parse of that output. The tiny model's matrices are scaled up so that its greedy output
    depends on the prompt."""
    import copy

    import torch

    from recbole_lrgd.llm.prompt import Demonstration, build_prompt, encode_prompt

    model, tok = copy.deepcopy(tiny_llm[0]), tiny_llm[1]
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(20 if weight.dim() == 2 else 1)
    scorer = _scorer((model, tok), max_new_tokens=12)
    texts = []
    generate = scorer.generate
    scorer.generate = lambda prefix, suffix: texts.append(generate(prefix, suffix)) or texts[-1]
    demos = [[Demonstration(("Alpha",), "Beta")], [Demonstration(("Gamma", "Delta"), "Toy Story (1995)")]]
    prompts = [build_prompt(tok, demos[u % 2], [f"User {u}"], TITLES, seed=(0, u),
                            demo_format="next_item", mode="generate") for u in range(4)]
    got = scorer.score_many(prompts)
    assert len(texts) == 4 and len(set(texts)) > 1
    for prompt, scores, seen in zip(prompts, got, texts):
        ids = torch.tensor([encode_prompt(tok, prompt)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             generation_config=scorer._greedy_config())
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert seen == text
        shown = [TITLES[i] for i in prompt.order]
        expected = np.empty(len(TITLES))
        expected[prompt.order] = ranking_scores(parse_ranking(text, shown, THRESHOLD), len(shown))
        np.testing.assert_array_equal(scores, expected)
    assert scorer.counts.generated_prompts == 4


def _run(tiny_data, tiny_llm_dir, **extra):
    from recbole_lrgd.quick_start import run

    cfg = {"data_path": tiny_data, "eval_users": 8, "show_progress": False, "use_gpu": False,
           "eval_batch_size": 100, "num_demos": 1, "llm_path": tiny_llm_dir, "state": "WARNING",
           "scorer_mode": "generate", "max_new_tokens": 8, "score_cache": False, **extra}
    return run("LRGD", "tiny", config_dict=cfg, saved=False)


def test_generate_run_end_to_end_returns_the_parse_failure_rate(tiny_data, tiny_llm_dir):
    result = _run(tiny_data, tiny_llm_dir)
    counts = result.score_counts
    assert counts.generated_prompts == 8
    assert result.test_result["generate_parse_failure"] == counts.failed_prompts / 8
    assert result.test_result["generate_unparsed"] == counts.unparsed_candidates / 160
    assert 0.0 <= result.test_result["ndcg@10"] <= 1.0


def test_parse_failure_rates_count_prompts_and_candidates(tiny_data, tiny_llm_dir, monkeypatch):
    """Half the outputs name one candidate, half name none: 50% of prompts fail, 195 of 200 candidates unparsed."""
    from recbole_lrgd.llm.generate import GenerateScorer

    outputs = iter(["1", "no idea"] * 5)
    monkeypatch.setattr(GenerateScorer, "generate", lambda self, prefix, suffix: next(outputs))
    result = _run(tiny_data, tiny_llm_dir, eval_users=10)
    assert result.test_result["generate_parse_failure"] == pytest.approx(0.5)
    assert result.test_result["generate_unparsed"] == pytest.approx(195 / 200)

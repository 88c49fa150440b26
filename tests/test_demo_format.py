"""demo_format: how a demonstration is shown (next_item, listed, contrast), its seeded others, and that a
format reaches the prompts, the token budget, the score cache and the optimizer state."""
import types

import numpy as np
import pytest

from conftest import run_live, yaml_config

from recbole_lrgd.config import build_config
from recbole_lrgd.data.demonstrations import DemonstrationPool
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.prompt import (DEMO_FORMATS, USER_MARKER, Demonstration, build_prompt, encode_parts,
                                     encode_prompt, render_demonstration, render_message, truncate_to_budget)
from recbole_lrgd.llm.tiny import make_tokenizer
from recbole_lrgd.model.ranker import ICLRanker
from recbole_lrgd.optimizer.state import score_context
from recbole_lrgd.settings import DEMO_FORMAT_NAMES, SCORE_KEYS, DemoSettings, PromptSettings
from recbole_lrgd.validate import check_values

TOK = make_tokenizer()
DEMO = Demonstration(("A", "B"), "T", others=("X", "Y", "Z"), slot=1)
# training sequences of a hand-made pool; items 20..29 are in no sequence (never a demonstration's other)
SEQS = {1: np.array([1, 2, 3, 4]), 2: np.array([5, 6, 7, 4]), 3: np.array([8, 9, 10, 11]),
        4: np.array([12, 13, 14]), 5: np.array([15, 16, 17, 18, 19]), 6: np.array([2, 6, 9, 13])}
TITLES = [f"Item {i}" for i in range(30)]


def _pool() -> DemonstrationPool:
    return DemonstrationPool(SEQS, n_items=30, max_his_len=10)


def _ranker(**overrides) -> ICLRanker:
    """A ranker over the hand-made pool, every setting not overridden read from the YAML."""
    cfg = yaml_config(**{"prompt_instruction": "Recommend.", "list_candidates": None, **overrides})
    return ICLRanker(TITLES, types.SimpleNamespace(tokenizer=TOK, mode="likelihood"), PromptSettings.from_config(cfg),
                     DemoSettings.from_config(cfg), _pool())


# -- the text of each format --------------------------------------------------------------------------
def test_the_default_format_renders_todays_text_byte_for_byte():
    assert yaml_config()["demo_format"] == "next_item"
    assert render_demonstration(2, DEMO, "next_item") == ["Example 2.", "History: A; B", "Next item: T", ""]
    message = render_message("Recommend.", [DEMO, Demonstration((), "U")], ["H1"], [], demo_format="next_item",
                             list_candidates=False)
    assert message == ("Recommend.\n\nExample 1.\nHistory: A; B\nNext item: T\n\nExample 2.\nHistory: (none)\n"
                       "Next item: U\n\nNow the user.\nHistory: H1\n\n"
                       "Which item will the user choose next? Answer with its title.")


def test_listed_and_contrast_lines_are_known():
    assert render_demonstration(2, DEMO, "listed") == [
        "Example 2.", "History: A; B", "Candidates: X; T; Y; Z", "Chose: T", ""]
    assert render_demonstration(2, DEMO, "contrast") == [
        "Example 2.", "History: A; B", "Not chosen: X; Y; Z", "Next item: T", ""]
    assert DEMO_FORMATS["listed"].lines(1, Demonstration(("A",), "T", ("X", "Y"), slot=2))[2] == "Candidates: X; Y; T"
    assert tuple(DEMO_FORMATS) == DEMO_FORMAT_NAMES == ("next_item", "listed", "contrast")  # the config's choices


@pytest.mark.parametrize("fmt,line", [("listed", "Candidates: X; T; Y; Z"), ("contrast", "Not chosen: X; Y; Z")])
def test_demonstrations_stay_in_the_shared_prefix(fmt, line):
    p = build_prompt(TOK, [DEMO], ["H1"], ["C1", "C2"], seed=(0, 1), mode="likelihood", demo_format=fmt)
    assert line in p.text[: p.split] and p.text[p.split:].startswith(USER_MARKER)
    assert line not in p.text[p.split:]


def test_truncation_keeps_a_demonstrations_others():
    demo = Demonstration(("A1", "A2", "A3"), "T", ("X", "Y", "Z"), slot=3)
    budget = iter([False, True])
    (short,), _ = truncate_to_budget([demo], ["H1"], lambda d, h: next(budget))
    assert short == Demonstration(("A2", "A3"), "T", ("X", "Y", "Z"), slot=3)
    long_demo = Demonstration(tuple(f"Old demo item {i}" for i in range(10)), "T", ("X", "Y", "Z"), slot=0)
    full = build_prompt(TOK, [long_demo], ["H1"], ["C1"], seed=(0, 1), mode="likelihood", demo_format="listed")
    p = build_prompt(TOK, [long_demo], ["H1"], ["C1"], seed=(0, 1), mode="likelihood", demo_format="listed",
                     max_tokens=len(encode_prompt(TOK, full)) - 10)
    assert len(p.demonstrations[0].history) < 10 and "Candidates: T; X; Y; Z" in p.text


# -- the others: seeded per demonstration, never its own items -------------------------------------
def test_negatives_are_training_items_outside_the_demonstration_and_fixed_per_seed():
    pool = _pool()
    for user in SEQS:
        demo = pool.demonstration(user)
        for seed in range(5):
            got = pool.negatives(demo, 3, seed)
            assert len(set(got)) == 3 and not set(got) & {*demo[0], demo[1]}
            assert set(got) <= set(np.concatenate(list(SEQS.values())).tolist())  # never items 0, 20..29
            assert got == pool.negatives(demo, 3, seed) == _pool().negatives(demo, 3, seed)
        assert len({pool.negatives(demo, 3, seed) for seed in range(5)}) > 1
    demo = pool.demonstration(1)
    assert len(pool.negatives(demo, 99, 0)) == len(pool.items) - len(set(SEQS[1]))  # as many as there are


# longer than the shown window (max_his_len 3); users 1 and 2 both end with item 7
LONG = {1: np.array([1, 2, 3, 4, 5, 6, 7]), 2: np.array([8, 9, 10, 11, 12, 13, 7]),
        3: np.array([1, 9, 14, 15, 16, 17, 18]), 4: np.array([2, 8, 14, 19, 3, 10])}


def test_negatives_are_none_of_the_users_items_not_only_the_shown_ones():
    pool = DemonstrationPool(LONG, n_items=30, max_his_len=3)
    for user, seq in LONG.items():
        for cut in range(3):
            demo = pool.demonstration(user, cut)
            assert len(demo[0]) == 3 - cut < len(seq) - 1 and pool.owner(demo) == user
            assert set(pool.negatives(demo, 99, 0)) == set(pool.items) - set(seq)  # all the others there are
            for seed in range(5):
                assert not set(pool.negatives(demo, 3, seed)) & set(seq)
    assert pool.owner(((8, 9), 7)) is None and pool.owner(((4, 5, 6), 18)) is None  # not any user's window
    tied = DemonstrationPool({**LONG, 5: np.array([20, 4, 5, 6, 7])}, n_items=30, max_his_len=3)
    assert tied.owner(tied.demonstration(5)) == 1  # the same window and target: the lowest id


def test_a_perturbed_history_excludes_only_what_it_shows_and_stays_fixed():
    pool = DemonstrationPool(LONG, n_items=30, max_his_len=3)
    perturbed = ((4, 25, 6), 7)  # user 1's demonstration, item 5 replaced by an item no user has
    assert pool.owner(perturbed) is None
    assert set(pool.negatives(perturbed, 99, 0)) == set(pool.items) - {4, 6, 7}  # 1, 2, 3 and 5 among them
    assert pool.negatives(perturbed, 3, 4) == pool.negatives(perturbed, 3, 4) == \
        DemonstrationPool(LONG, n_items=30, max_his_len=3).negatives(perturbed, 3, 4)


def test_the_ranker_fills_others_and_seeds_the_listed_position():
    demo = _pool().demonstration(2)
    slots = set()
    for seed in range(12):
        ranker = _ranker(demo_format="listed", seed=seed)
        shown = ranker.render(demo)
        assert shown.others == tuple(TITLES[i] for i in ranker.pool.negatives(demo, 3, seed))
        candidates = render_demonstration(1, shown, "listed")[2][len("Candidates: "):].split("; ")
        assert candidates.index("Item 4") == shown.slot and len(candidates) == 4
        assert ranker.render(demo) == shown  # the same in every prompt
        slots.add(shown.slot)
    assert len(slots) > 1  # not always first or last
    assert _ranker(demo_format="next_item").render(demo).others == ()


def test_demonstration_tokens_count_the_rendered_format():
    demo = _pool().demonstration(5)
    base = _ranker(demo_format="next_item").demonstration_tokens(demo)
    listed = [_ranker(demo_format="listed", demo_negatives=n).demonstration_tokens(demo) for n in (1, 2, 4)]
    assert base < listed[0] < listed[1] < listed[2]
    for demo_format in DEMO_FORMATS:  # what the demonstration adds to a built prompt, and the newline before it
        ranker = _ranker(demo_format=demo_format)
        first = _pool().demonstration(1)
        prefix = [len(encode_parts(TOK, ranker.prompt(6, [2, 6, 9], [1, 2, 3, 4], demos))[0])
                  for demos in ([first], [first, demo])]
        assert prefix[1] - prefix[0] == ranker.demonstration_tokens(demo) + 1, demo_format


# -- config -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys,match", [
    ({"demo_format": "foo"}, "demo_format must be one of next_item, listed, contrast, not 'foo'"),
    ({"demo_negatives": 0}, "demo_negatives must be a positive integer, not 0"),
    ({"demo_negatives": "3"}, "demo_negatives must be a positive integer, not '3'"),
    ({"demo_negatives": True}, "demo_negatives must be a positive integer, not True"),
])
def test_bad_values_are_one_line_errors(keys, match):
    with pytest.raises(LRGDError, match=match) as info:
        check_values(yaml_config(**keys))
    assert "\n" not in str(info.value)


def test_build_config_checks_the_format(tiny_data, tiny_llm_dir):
    with pytest.raises(LRGDError, match="demo_format must be one of"):
        build_config("LRGD", "tiny", config_dict={"data_path": tiny_data, "llm_path": tiny_llm_dir,
                                                  "demo_format": "listd", "state": "WARNING"})


def _run(tiny_data, tiny_llm_dir, monkeypatch, **extra):
    """A tiny-LLM run with the score cache on; returns its live objects (``quick_start.Built``), its result and every
    (prompt text, scores) scored."""
    scored = []
    original = ICLRanker.score

    def spy(self, prompts):
        got = original(self, prompts)
        scored.extend((p.text, s.tolist()) for p, s in zip(prompts, got))
        return got

    cfg = {"data_path": tiny_data, "eval_users": 6, "show_progress": False, "use_gpu": False, "eval_batch_size": 100,
           "llm_path": tiny_llm_dir, "state": "WARNING", "demo_mode": "random", "score_cache": True, **extra}
    with monkeypatch.context() as patch:
        patch.setattr(ICLRanker, "score", spy)
        return (*run_live("LRGD", "tiny", config_dict=cfg, saved=False), scored)


def test_listed_run_scores_differ_from_next_item_and_repeat_exactly(tiny_data, tiny_llm_dir, monkeypatch):
    """The score cache's keys are the prompts' token ids: a listed run finds none of next_item's scores,
    and a second listed run (the same seeded others, the same prompts) finds all of its own."""
    base_built, _, base_scored = _run(tiny_data, tiny_llm_dir, monkeypatch)
    listed_built, listed, listed_scored = _run(tiny_data, tiny_llm_dir, monkeypatch, demo_format="listed")
    again_built, again, again_scored = _run(tiny_data, tiny_llm_dir, monkeypatch, demo_format="listed")
    assert len(listed_scored) == len(base_scored) > 0
    assert all("Chose: " in text and "Next item: " not in text for text, _ in listed_scored)
    assert all("Next item: " in text and "Chose: " not in text for text, _ in base_scored)
    assert [s for _, s in base_scored] != [s for _, s in listed_scored]
    assert listed.score_counts.cache_hits == 0  # not one next_item key reused
    assert again.score_counts.cache_misses == 0
    assert again_scored == listed_scored and again.test_result == listed.test_result
    # the optimizer's state identity too
    assert {"demo_format", "demo_negatives"} <= set(SCORE_KEYS)
    contexts = [score_context(built.model.config) for built in (base_built, listed_built, again_built)]
    assert contexts[0] != contexts[1] == contexts[2]
    assert listed_built.model.ranker.settings.demo_format == "listed"  # LRGD passes the config on

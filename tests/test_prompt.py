"""The prompt builder: content, seeded shuffling, chat template, truncation to a token budget."""
from recbole_lrgd.llm.tiny import make_tokenizer

from recbole_lrgd.llm.prompt import (Demonstration, apply_template, build_prompt, encode_prompt, shuffled_order,
                                     truncate_to_budget)

TOK = make_tokenizer()
CANDS = [f"Cand {i}" for i in range(20)]


def test_prompt_holds_demonstrations_history_and_every_candidate_in_shown_order():
    demos = [Demonstration(("A1", "A2"), "A3"), Demonstration(("B1",), "B2")]
    p = build_prompt(TOK, demos, ["H1", "H2", "H3"], CANDS, seed=(0, 7),
                     mode="likelihood", demo_format="next_item", list_candidates=True)
    text = p.text
    assert text.index("History: A1; A2") < text.index("Next item: A3") < text.index("History: B1") \
        < text.index("History: H1; H2; H3")
    shown = [line[2:] for line in text.split("\n") if line.startswith("- ")]
    assert shown == [CANDS[i] for i in p.order]
    assert sorted(p.order) == list(range(20)) and p.order != list(range(20))
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>")


def test_shuffle_is_seeded_by_seed_and_user():
    assert shuffled_order(20, (1, 5)) == shuffled_order(20, (1, 5))
    assert shuffled_order(20, (1, 5)) != shuffled_order(20, (1, 6))
    assert shuffled_order(20, (1, 5)) != shuffled_order(20, (2, 5))


def test_verbalizer_labels_candidates_with_letters():
    p = build_prompt(TOK, [], ["H1"], CANDS[:3], seed=(0, 1), demo_format="next_item", mode="verbalizer")
    assert p.labels == ["A", "B", "C"]
    for label, k in zip(p.labels, p.order):
        assert f"{label}. {CANDS[k]}" in p.text
    assert "letter" in p.text


def test_no_chat_template_falls_back_to_plain_text():
    tok = make_tokenizer(chat_template=False)
    assert apply_template(tok, "msg") == "msg\nAnswer: "


def test_truncation_drops_oldest_demo_history_then_user_history_then_demos_never_candidates():
    demos = [Demonstration(("d1", "d2", "d3"), "dt"), Demonstration(("e1",), "et")]
    budget = iter([False, False, True])  # two rounds of dropping, then it fits
    d, h = truncate_to_budget(demos, ["h1", "h2"], lambda d, h: next(budget))
    assert d[0].history == ("d3",) and h == ["h1", "h2"]
    d, h = truncate_to_budget(demos, ["h1", "h2"], lambda d, h: False)
    assert d == [] and h == ["h2"]


def test_budget_is_respected_and_candidates_survive():
    demos = [Demonstration(tuple(f"Old demo item {i}" for i in range(10)), "Demo target")] * 2
    history = [f"User item {i}" for i in range(10)]
    full = build_prompt(TOK, demos, history, CANDS, seed=(0, 1),
                        mode="likelihood", demo_format="next_item", list_candidates=True)
    budget = len(encode_prompt(TOK, full)) - 150
    p = build_prompt(TOK, demos, history, CANDS, seed=(0, 1),
                     mode="likelihood", demo_format="next_item", max_tokens=budget, list_candidates=True)
    assert len(encode_prompt(TOK, p)) <= budget
    assert all(c in p.text for c in CANDS)
    assert "User item 9" in p.text and "Old demo item 0" not in p.text
    assert p.history == tuple(history)  # demonstrations shrank first


def test_likelihood_prompts_do_not_list_candidates_unless_asked():
    p = build_prompt(TOK, [], ["H1"], CANDS, seed=(0, 1), mode="likelihood", demo_format="next_item")
    assert not any(c in p.text for c in CANDS) and "Answer with its title" in p.text
    assert all(c in build_prompt(TOK, [], ["H1"], CANDS, seed=(0, 1),
                                 mode="likelihood", demo_format="next_item", list_candidates=True).text for c in CANDS)

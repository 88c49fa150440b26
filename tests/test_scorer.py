"""The scorer: cached likelihood equals the naive full-prompt path; verbalizer reads label logits."""
import copy

import numpy as np
import pytest
import torch
from conftest import scorer_settings, yaml_config

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.batching import FixedBatches
from recbole_lrgd.llm.prompt import Demonstration, Prompt, build_prompt, encode_parts, encode_prompt
from recbole_lrgd.llm.modes import make_scorer
from recbole_lrgd.llm.scorer import LLMScorer, common_start, pack_candidates
from recbole_lrgd.llm.title_score import mean_token_logprob, naive_likelihood
from recbole_lrgd.settings import ScorerSettings


def _scorer(tiny_llm, mode="likelihood", candidate_batch_size=20, user_batch_size=8, score_cache=None,
            model_id="", max_new_tokens=8):
    settings = scorer_settings(scorer_mode=mode, candidate_batch_size=candidate_batch_size,
                               user_batch_size=user_batch_size, max_new_tokens=max_new_tokens,
                               title_match_threshold=0.8, title_score="mean", title_score_tokens=3)
    return make_scorer(*tiny_llm, settings, score_cache, model_id)


def _naive(scorer, prompt):
    return naive_likelihood(scorer.model, encode_prompt(scorer.tokenizer, prompt),
                            [scorer.candidate_ids(c) for c in prompt.candidates])


def test_mean_token_logprob_ignores_padding():
    logprobs = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))
    got = mean_token_logprob(logprobs, torch.tensor([[1, 1]]), torch.tensor([[1.0, 0.0]]))
    assert got.item() == pytest.approx(np.log(0.5))
    got = mean_token_logprob(logprobs, torch.tensor([[1, 1]]), torch.tensor([[1.0, 1.0]]))
    assert got.item() == pytest.approx((np.log(0.5) + np.log(0.75)) / 2)


def test_pack_candidates_layout():
    ids, positions, allowed, source = pack_candidates([[5, 6, 7], [8], [9, 10]], prefix_len=2)
    assert ids.tolist() == [5, 6, 9] and positions.tolist() == [2, 3, 2]
    assert source == [(0, 0, 6), (0, 1, 7), (2, 2, 10)]
    assert allowed.tolist() == [[True, True, True, False, False],
                                [True, True, True, True, False],
                                [True, True, False, False, True]]


def _prompt(tok, mode="likelihood"):
    demos = [Demonstration(("Alpha", "Beta gamma"), "Delta")]
    cands = [f"Candidate {'x' * (i % 7)} {i}" for i in range(20)]  # different lengths
    return build_prompt(tok, demos, ["Epsilon", "Zeta"], cands, seed=(0, 3), demo_format="next_item", mode=mode)


@pytest.mark.parametrize("batch", [20, 6])
def test_cached_likelihood_equals_naive_per_candidate_forward(tiny_llm, batch):
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, candidate_batch_size=batch)
    prompt = _prompt(tok)
    cached = scorer.score(prompt)
    np.testing.assert_allclose(cached, _naive(scorer, prompt), atol=1e-4)
    assert np.ptp(cached) > 1e-3  # the candidates really are told apart


def test_shared_prefix_is_encoded_once_and_left_intact(tiny_llm):
    """Users that share the demonstrations reuse one prefix cache; scores still equal the naive path."""
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, candidate_batch_size=7)
    demos = [Demonstration(("Alpha", "Beta"), "Gamma")]
    cands = [f"Item {i}" for i in range(20)]
    prompts = [build_prompt(tok, demos, [f"User {u} item {k}" for k in range(u + 1)], cands, seed=(0, u),
                            mode="likelihood", demo_format="next_item")
               for u in range(3)]
    shapes, handle = _batch_calls(scorer)
    try:
        cached = [scorer.score(p) for p in prompts]
    finally:
        handle.remove()
    prefix_len = len(encode_parts(tok, prompts[0])[0])
    assert shapes.count((1, prefix_len)) == 1  # the prefix ran once for three users
    (cache, _), = scorer._prefixes.values()
    assert cache.get_seq_length() == prefix_len
    for p, got in zip(prompts, cached, strict=True):
        np.testing.assert_allclose(got, _naive(scorer, p), atol=1e-4)


def test_forgotten_prefixes_are_encoded_again_to_the_same_scores(tiny_llm):
    """``forget_prefixes`` (a benchmark's cold start) drops the shared prefix: the next prompt encodes it again,
    and scores as before."""
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm)
    prompt = _prompt(tok)
    prefix_len = len(encode_parts(tok, prompt)[0])
    shapes, handle = _batch_calls(scorer)
    try:
        first = scorer.score(prompt)
        warm = scorer.score(prompt)
        scorer.forget_prefixes()
        cold = scorer.score(prompt)
    finally:
        handle.remove()
    assert shapes.count((1, prefix_len)) == 2  # the first score and the one after forgetting
    np.testing.assert_array_equal(warm, first)
    np.testing.assert_array_equal(cold, first)


def test_verbalizer_scores_are_label_logits_in_caller_order(tiny_llm):
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, "verbalizer")
    prompt = _prompt(tok, mode="verbalizer")
    got = scorer.score(prompt)
    logits = model(input_ids=torch.tensor([encode_prompt(tok, prompt)])).logits[0, -1]
    label_ids = [tok(label, add_special_tokens=False).input_ids[0] for label in prompt.labels]
    expected = np.empty(20)
    expected[prompt.order] = logits[label_ids].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_unknown_mode_is_an_error(tiny_llm):
    with pytest.raises(ValueError, match="scorer_mode"):
        _scorer(tiny_llm, mode="bogus")


def _user_prompts(tok, mode="likelihood", demos=(Demonstration(("Alpha", "Beta gamma"), "Delta"),), users=5,
                  n_cands=8):
    """Prompts sharing one demonstration prefix, with histories and candidate titles of different lengths."""
    return [build_prompt(tok, list(demos), [f"Item {'y' * u} {k}" for k in range(u + 1)],
                         [f"Candidate {'x' * ((i + u) % 6)} {i}" for i in range(n_cands)], seed=(0, u),
                         demo_format="next_item", mode=mode)
            for u in range(users)]


def _batch_calls(scorer):
    """Record the (batch, length) of every 2D input the model sees."""
    shapes = []
    handle = scorer.model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    return shapes, handle


def test_score_many_batches_users_and_equals_naive_and_score(tiny_llm):
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, candidate_batch_size=20, user_batch_size=3)
    prompts = _user_prompts(tok)
    prefix = encode_parts(tok, prompts[0])[0]
    suffix_lens = [len(encode_parts(tok, p)[1]) for p in prompts]
    assert len(set(suffix_lens)) == len(prompts)  # every row has its own length: the batch is padded
    shapes, handle = _batch_calls(scorer)
    try:
        many = scorer.score_many(prompts)
    finally:
        handle.remove()
    assert shapes[0] == (1, len(prefix))  # the prefix once, then 5 users in two forwards of 3 and 2
    assert [s[0] for s in shapes[1:]] == [3, 2]
    (cache, _), = scorer._prefixes.values()
    assert cache.get_seq_length() == len(prefix)  # the cached prefix is untouched: one row, prefix only
    assert all(layer.keys.shape[0] == 1 for layer in cache.layers)
    for p, got in zip(prompts, many, strict=True):
        np.testing.assert_allclose(got, _naive(scorer, p), atol=1e-4)
        np.testing.assert_allclose(got, scorer.score(p), atol=1e-5)
        assert np.ptp(got) > 1e-3


def test_score_many_verbalizer_equals_score(tiny_llm):
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, "verbalizer", user_batch_size=8)
    prompts = _user_prompts(tok, mode="verbalizer")
    shapes, handle = _batch_calls(scorer)
    try:
        many = scorer.score_many(prompts)
    finally:
        handle.remove()
    assert [s[0] for s in shapes] == [1, 5]
    for p, got in zip(prompts, many, strict=True):
        logits = model(input_ids=torch.tensor([encode_prompt(tok, p)])).logits[0, -1]
        expected = np.empty(len(p.order))
        expected[p.order] = logits[scorer.label_token_ids(p.labels)].double().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4)
        np.testing.assert_allclose(got, scorer.score(p), atol=1e-5)


def test_score_many_mixed_prefixes_and_long_candidate_lists(tiny_llm):
    """Prompts of two demonstration sets and zero-shot, interleaved; one user with more candidates than a
    candidate batch (two rows): each result is in the caller's order and equals score()."""
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, candidate_batch_size=10, user_batch_size=4)
    a = _user_prompts(tok, users=3)
    b = _user_prompts(tok, demos=(Demonstration(("Omega",), "Psi"), Demonstration(("Chi", "Phi"), "Tau")), users=3)
    zero = _user_prompts(tok, demos=(), users=2)
    long = _user_prompts(tok, users=1, n_cands=14)
    prompts = [a[0], b[0], zero[0], a[1], long[0], b[1], zero[1], a[2], b[2]]
    assert len({tuple(encode_parts(tok, p)[0]) for p in prompts}) == 3
    many = scorer.score_many(prompts)
    for p, got in zip(prompts, many, strict=True):
        np.testing.assert_allclose(got, scorer.score(p), atol=1e-5)
        np.testing.assert_allclose(got, _naive(scorer, p), atol=1e-4)


def test_score_many_uses_the_score_cache_per_prompt(tiny_llm, tmp_path):
    from recbole_lrgd.llm.score_cache import ScoreCache

    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, score_cache=ScoreCache.in_dir(str(tmp_path)), model_id="tiny")
    prompts = _user_prompts(tok, users=4)
    first = scorer.score_many(prompts[:2])
    assert (scorer.counts.cache_hits, scorer.counts.cache_misses) == (0, 16)
    shapes, handle = _batch_calls(scorer)
    try:
        again = scorer.score_many(prompts)
    finally:
        handle.remove()
    assert (scorer.counts.cache_hits, scorer.counts.cache_misses) == (16, 32)
    assert [s[0] for s in shapes] == [2]  # only the two new users ran
    for got, want in zip(again[:2], first, strict=True):
        np.testing.assert_array_equal(got, want)
    for p, got in zip(prompts, again, strict=True):
        np.testing.assert_allclose(got, scorer.score(p), atol=1e-5)


# -- one likelihood path: long candidate lists, empty suffixes, score == score_many ------------------
def test_more_candidates_than_a_row_holds_split_into_rows_across_forwards(tiny_llm):
    """20 candidates in rows of 6 are 4 rows per user, each repeating the suffix; with 3 rows a forward,
    two users' 8 rows take 3 forwards (a user's rows straddle them) and still equal the naive path."""
    model, tok = tiny_llm
    scorer = _scorer(tiny_llm, candidate_batch_size=6, user_batch_size=3)
    prompts = _user_prompts(tok, users=2, n_cands=20)
    shapes, handle = _batch_calls(scorer)
    try:
        many = scorer.score_many(prompts)
    finally:
        handle.remove()
    assert [s[0] for s in shapes] == [1, 3, 3, 2]  # the prefix, then 8 rows
    for p, got in zip(prompts, many, strict=True):
        np.testing.assert_allclose(got, _naive(scorer, p), atol=1e-4)
        assert np.ptp(got) > 1e-3


class _NoSuffix(Prompt):
    """A prompt whose whole text is the shared prefix: its user part is empty."""

    @property
    def split(self) -> int:
        return len(self.text)


def _no_suffix(prompt: Prompt) -> Prompt:
    return _NoSuffix(prompt.text, prompt.order, prompt.candidates, prompt.labels)


def test_empty_suffix_reads_the_first_token_from_the_prefix(tiny_llm):
    """With no user part, the prefix's last logits predict each candidate's first token: likelihood equals
    the naive path, verbalizer the full prompt's label logits, also batched beside a prompt with a suffix."""
    model, tok = tiny_llm
    plain = _prompt(tok)
    empty = _no_suffix(plain)
    assert encode_parts(tok, empty)[1] == [] and encode_prompt(tok, empty) == encode_prompt(tok, plain)
    scorer = _scorer(tiny_llm, candidate_batch_size=6)
    got, other = scorer.score_many([empty, plain])
    np.testing.assert_allclose(got, _naive(scorer, plain), atol=1e-4)
    np.testing.assert_allclose(other, _naive(scorer, plain), atol=1e-4)

    verbalizer = _scorer(tiny_llm, "verbalizer")
    prompt = _no_suffix(_prompt(tok, mode="verbalizer"))
    logits = model(input_ids=torch.tensor([encode_prompt(tok, prompt)])).logits[0, -1]
    expected = np.empty(20)
    expected[prompt.order] = logits[verbalizer.label_token_ids(prompt.labels)].double().numpy()
    np.testing.assert_allclose(verbalizer.score(prompt), expected, atol=1e-5)


def test_empty_suffix_and_one_token_candidates_need_no_forward_after_the_prefix(tiny_llm):
    model, tok = tiny_llm
    prompt = _no_suffix(build_prompt(tok, [], ["Alpha"], list("abcdef"), seed=(0, 1),
                                     mode="likelihood", demo_format="next_item"))
    scorer = _scorer(tiny_llm)
    assert all(len(scorer.candidate_ids(c)) == 1 for c in prompt.candidates)
    shapes, handle = _batch_calls(scorer)
    try:
        got = scorer.score(prompt)
    finally:
        handle.remove()
    assert shapes == [(1, len(encode_prompt(tok, prompt)))]
    np.testing.assert_allclose(got, _naive(scorer, prompt), atol=1e-4)


def test_every_mode_has_the_scorer_interface(tiny_llm):
    from recbole_lrgd.llm.generate import GenerateScorer
    from recbole_lrgd.llm.counts import ScoreCounts

    for mode, cls in [("likelihood", LLMScorer), ("verbalizer", LLMScorer), ("generate", GenerateScorer)]:
        scorer = _scorer(tiny_llm, mode, user_batch_size=5)
        assert type(scorer) is cls and scorer.mode == mode and scorer.tokenizer is tiny_llm[1]
        assert scorer.batching == FixedBatches(5) and scorer.counts == ScoreCounts()
    defaults = yaml_config()
    del defaults["candidate_batch_size"]
    with pytest.raises(LRGDError, match="no 'candidate_batch_size'"):  # no defaults in code: the YAML holds them
        ScorerSettings.from_config(defaults)


class _OldStyleLM(torch.nn.Module):
    """The tiny model behind a transformers-4.x-style forward: ``past_key_values`` in and out, no
    ``logits_to_keep`` (every position's logits computed)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    @property
    def dtype(self):
        return self.inner.dtype

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        from types import SimpleNamespace

        from recbole_lrgd.llm.kv_cache import KVModel

        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **{KVModel(self.inner)._cache_kw: past_key_values})
        return SimpleNamespace(logits=out.logits, past_key_values=getattr(out, "cache", None) or out.past_key_values)


@pytest.mark.parametrize("mode", ["likelihood", "verbalizer"])
def test_a_past_key_values_model_without_logits_to_keep_scores_the_same(tiny_llm, mode):
    model, tok = tiny_llm
    old_style = _OldStyleLM(model)
    prompts = _user_prompts(tok, mode=mode, users=3, n_cands=8) + _per_user_prompts(tok, mode)  # one prefix, several
    want = _scorer(tiny_llm, mode, candidate_batch_size=5).score_many(prompts)
    scorer = _scorer((old_style, tok), mode, candidate_batch_size=5)
    assert (scorer.lm._cache_kw, scorer.lm._keeps_logits) == ("past_key_values", False)
    for got, expected in zip(scorer.score_many(prompts), want, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


# -- per-user demonstrations: prompts of different prefixes in one forward pass ------------------------
@pytest.fixture(scope="module")
def sharp_llm(tiny_llm):
    """The tiny LLaMA with its queries and keys scaled up: its attention, nearly uniform at random init, is
    sharp, so a wrong position or a visible pad shows in the scores."""
    model, tok = tiny_llm
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        for layer in sharp.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    return sharp, tok


DEMO_SETS = [(Demonstration(("Alpha", "Beta gamma"), "Delta"),),
             (Demonstration(("Omega",), "Psi"), Demonstration(("Chi", "Phi long title"), "Tau")),
             ()]


def _per_user_prompts(tok, mode="likelihood"):
    """Six users: demonstration sets 0, 1, 0, 2 (zero-shot), 1, 0, so prefixes of three lengths, each shared
    by some users; user 2 has 9 candidates (two rows of 6 in likelihood mode)."""
    sets = [0, 1, 0, 2, 1, 0]
    return [build_prompt(tok, list(DEMO_SETS[s]), [f"Item {'y' * u} {k}" for k in range(u % 3 + 1)],
                         [f"Candidate {'x' * ((i + u) % 6)} {i}" for i in range(9 if u == 2 else 5)],
                         seed=(0, u), demo_format="next_item", mode=mode)
            for u, s in enumerate(sets)]


def _one_at_a_time(llm, mode, prompts, **kwargs):
    """The unbatched path: a fresh scorer per prompt, so each runs alone on its own prefix's cache."""
    return [_scorer(llm, mode, **kwargs).score(p) for p in prompts]


@pytest.mark.parametrize("mode", ["likelihood", "verbalizer"])
def test_per_user_prefixes_share_one_padded_prefill_and_one_forward(sharp_llm, mode):
    """Rows of three different prefixes go through ONE forward pass after ONE padded prefill that holds
    each distinct prefix once, on the kept cache of the start they share (the instruction); each user's
    scores equal its prompt scored alone."""
    model, tok = sharp_llm
    scorer = _scorer(sharp_llm, mode, candidate_batch_size=6, user_batch_size=8)
    prompts = _per_user_prompts(tok, mode)
    prefixes = {tuple(encode_parts(tok, p)[0]) for p in prompts}
    assert len({len(p) for p in prefixes}) == 3  # the shorter prefixes are padded in the prefill, masked after
    start = common_start(list(prefixes))
    assert len(start) > 10 and all(p[: len(start)] == start for p in prefixes)
    shapes, handle = _batch_calls(scorer)
    try:
        many = scorer.score_many(prompts)
    finally:
        handle.remove()
    rows = 7 if mode == "likelihood" else 6
    assert shapes[:2] == [(1, len(start)), (3, max(map(len, prefixes)) - len(start))]
    assert [s[0] for s in shapes[2:]] == [rows]
    assert list(scorer._prefixes) == [start]  # the shared start is kept, per-user prefixes are not
    alone_scores = _one_at_a_time(sharp_llm, mode, prompts, candidate_batch_size=6)
    for p, got, alone in zip(prompts, many, alone_scores, strict=True):
        np.testing.assert_allclose(got, alone, atol=1e-4)
        assert np.ptp(got) > 1e-3
        if mode == "likelihood":
            np.testing.assert_allclose(got, _naive(scorer, p), atol=1e-4)


def test_per_user_prefixes_in_several_forwards_and_beside_an_empty_suffix(sharp_llm):
    """Two rows a forward (a user's rows straddle forwards, each forward with its own prefill), and a
    prompt with no user part: its first-token logits come from the padded prefill."""
    model, tok = sharp_llm
    prompts = _per_user_prompts(tok) + [_no_suffix(_per_user_prompts(tok)[1])]
    scorer = _scorer(sharp_llm, candidate_batch_size=6, user_batch_size=2)
    for p, got, alone in zip(prompts, scorer.score_many(prompts),
                             _one_at_a_time(sharp_llm, "likelihood", prompts, candidate_batch_size=6), strict=True):
        np.testing.assert_allclose(got, alone, atol=1e-4)
        np.testing.assert_allclose(got, _naive(scorer, p), atol=1e-4)


def test_common_start_leaves_every_sequence_a_token():
    assert common_start([(1, 2, 3, 4), (1, 2, 5), (1, 2, 3)]) == (1, 2)
    assert common_start([(1, 2, 3), (1, 2, 3, 4)]) == (1, 2)
    assert common_start([(1, 2), (3, 2)]) == ()


def test_per_user_scores_do_not_depend_on_what_ran_before(sharp_llm):
    """A chunk scores bit for bit the same on a fresh scorer and on one that already keeps the chunk's
    shared prefix: its scores are a function of the chunk alone (exact sharding)."""
    model, tok = sharp_llm
    chunk = _per_user_prompts(tok)
    fresh = _scorer(sharp_llm, candidate_batch_size=6, user_batch_size=8).score_many(chunk)
    warm = _scorer(sharp_llm, candidate_batch_size=6, user_batch_size=8)
    warm.score_many(_user_prompts(tok, demos=DEMO_SETS[0], users=8))  # keeps set 0's prefix
    assert tuple(encode_parts(tok, chunk[0])[0]) in warm._prefixes
    for got, want in zip(warm.score_many(chunk), fresh, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.default_llm
@pytest.mark.parametrize("mode", ["likelihood", "verbalizer"])
def test_default_llm_per_user_prefixes_equal_one_at_a_time(mode):
    """SmolLM2: users with their own (nearest-like) demonstrations, some shared, batched in one padded
    prefill and one forward, score as each prompt alone (fp32)."""
    from recbole_lrgd.llm.loader import load_llm

    llm = load_llm(None, device="cpu", dtype="float32")
    tok = llm[1]
    sets = [[Demonstration(("Toy Story (1995)", "Heat (1995)"), "Fargo (1996)")],
            [Demonstration(("Star Wars (1977)",), "Return of the Jedi (1983)"),
             Demonstration(("Scream (1996)", "Evita (1996)", "Contact (1997)"), "Titanic (1997)")],
            []]
    cands = ["Babe (1995)", "Casino (1995)", "Jumanji (1995)", "Sabrina (1995)", "GoldenEye (1995)",
             "Braveheart (1995)", "Apollo 13 (1995)", "Twelve Monkeys (1995)", "Clueless (1995)"]
    histories = [["Scream (1996)"], ["Evita (1996)", "Heat (1995)"], ["Titanic (1997)", "Scream (1996)"],
                 ["Fargo (1996)"], ["Heat (1995)", "Contact (1997)", "Babe (1995)"]]
    prompts = [build_prompt(tok, sets[s], h, cands if u == 2 else cands[:5], seed=(0, u),
                            demo_format="next_item", mode=mode)
               for u, (s, h) in enumerate(zip([0, 1, 0, 2, 1], histories))]
    assert len({len(encode_parts(tok, p)[0]) for p in prompts}) == 3
    scorer = _scorer(llm, mode, candidate_batch_size=6, user_batch_size=8)
    shapes, handle = _batch_calls(scorer)
    try:
        many = scorer.score_many(prompts)
    finally:
        handle.remove()
    assert [s[0] for s in shapes] == [1, 3, 6 if mode == "likelihood" else 5]  # shared start, prefixes, rows
    for got, alone in zip(many, _one_at_a_time(llm, mode, prompts, candidate_batch_size=6), strict=True):
        np.testing.assert_allclose(got, alone, atol=1e-4)
        assert np.ptp(got) > 1e-2

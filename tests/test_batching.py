"""Which rows share a forward pass (llm/batching.py): fixed batches, token-budget batches by length, the budget of a
device, and the scores of budget batches against one user at a time."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from test_scorer import _per_user_prompts, _scorer, _user_prompts

from recbole_lrgd.llm import batching
from recbole_lrgd.llm.batching import FixedBatches, TokenBudget, make_batching, token_bytes
from recbole_lrgd.llm.prompt import encode_parts
from recbole_lrgd.llm.scorer import LLMScorer, common_start


def test_fixed_batches_read_the_rows_alone():
    """A prefix with a batch's worth of rows keeps its own batches; the rest share batches in order."""
    a, b, c = (1,), (2,), (3,)
    plan = FixedBatches(3).plan
    assert plan([a, b, a, c, a, b], [1] * 6) == [[0, 2, 4], [1, 3, 5]]
    assert plan([a, b, a, c, a, a, b, a], [1] * 8) == [[0, 2, 4], [5, 7], [1, 3, 6]]
    assert plan([b, c], [9, 1]) == [[0, 1]]
    assert FixedBatches(3).chunk_users == 3


def test_a_token_budget_fills_batches_with_rows_of_like_length():
    """Rows by prefix + own length: 3 (3 + 5), 0 (2 + 10), 2 (2 + 20) fit 100 padded tokens (3 x (3 + 20));
    row 1 (1 + 40) would make it 4 x (3 + 40) = 172."""
    prefixes, widths = [(1, 2), (3,), (1, 2), (4, 5, 6)], [10, 40, 20, 5]
    assert TokenBudget(100, prefix_weight=1.0).plan(prefixes, widths) == [[0, 2, 3], [1]]
    assert TokenBudget(1000, prefix_weight=1.0).plan(prefixes, widths) == [[0, 1, 2, 3]]
    assert TokenBudget(30, prefix_weight=1.0).plan([(1,), (1,)], [50, 2]) == [[1], [0]]  # over the budget: alone


def test_a_shared_prefix_keeps_batches_of_its_own_under_a_budget():
    shared, other = (7,) * 10, (8,)
    prefixes = [shared] * batching.SHARED_PREFIX_ROWS + [other, other]
    widths = list(range(1, batching.SHARED_PREFIX_ROWS + 1)) + [1, 1]
    plan = TokenBudget(10 ** 6).plan(prefixes, widths)
    assert plan == [list(range(batching.SHARED_PREFIX_ROWS)), [8, 9]]
    assert TokenBudget(10 ** 6).plan([shared] * 3 + [other], [1] * 4) == [[0, 1, 2, 3]]  # too few: mixed


def test_a_prefix_token_weighs_its_keys_and_values():
    """Own 10 + prefix 91 x 0.1 = 19.1 a row: 5 rows fit 100 tokens, 6 do not; unweighted, one row is 101; weightless, the six cost 60."""
    prefixes, widths = [(0,) * 90] * 6, [10] * 6
    assert TokenBudget(100, prefix_weight=0.1).plan([p + (r,) for r, p in enumerate(prefixes)], widths) == [
        [0, 1, 2, 3, 4], [5]]
    assert TokenBudget(100, prefix_weight=1.0).plan([p + (r,) for r, p in enumerate(prefixes)], widths) == [
        [r] for r in range(6)]
    assert TokenBudget(100).plan([p + (r,) for r, p in enumerate(prefixes)], widths) == [list(range(6))]


def test_chunk_users_follow_the_budget_within_bounds():
    assert TokenBudget(2048).chunk_users == 32
    assert TokenBudget(100).chunk_users == batching.MIN_CHUNK_USERS
    assert TokenBudget(10 ** 7).chunk_users == batching.MAX_CHUNK_USERS


def test_make_batching_reads_user_batch_size(tiny_llm):
    model = tiny_llm[0]
    assert make_batching(8, model) == FixedBatches(8)
    # the tiny float32 Llama (2 layers, 2 key-value heads of 8, hidden 32, MLP 64, vocabulary 261): a prefix token
    # holds 2 x 2 x 2 x 8 x 4 = 256 bytes, an own token 256 + (3 x 64 + 4 x 32) x 4 + 261 x 12 = 4,668; on a CPU
    # the budget is 1.25 GiB of own tokens
    assert token_bytes(model.config, model.dtype) == (256, 4668)
    assert make_batching("auto", model) == TokenBudget((5 << 28) // 4668, round(256 / 4668, 4))


def test_token_bytes_of_the_8b_shape():
    """Llama-3.1-8B in bf16: keys and values 2 x 32 layers x 8 heads x 128 x 2 bytes; an own token adds the
    activations (3 x 14,336 + 4 x 4,096) x 2 bytes and the logits 128,256 x (2 + 4 + 4) bytes."""
    config = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             intermediate_size=14336, vocab_size=128256, head_dim=128)
    assert token_bytes(config, torch.bfloat16) == (131072, 131072 + 118784 + 1282560)


def _budget_scorer(llm, mode: str, tokens: int) -> LLMScorer:
    base = _scorer(llm, mode, candidate_batch_size=6)
    return LLMScorer(base.model, base.tokenizer, mode, 6, batching=TokenBudget(tokens), score_cache=None,
                     model_id="", title_score="mean", title_score_tokens=3)


def _forward_batches(scorer):
    """The batch size of every forward pass that scores rows (after a prefix's own prefill)."""
    sizes = []
    handle = scorer.model.register_forward_pre_hook(lambda m, a, k: sizes.append(k["input_ids"].shape[0]),
                                                    with_kwargs=True)
    return sizes, handle


@pytest.mark.parametrize("mode", ["likelihood", "verbalizer"])
def test_budget_batches_score_as_one_user_at_a_time_in_float32(tiny_llm, mode):
    """Per-user and shared prefixes, rows cut into several length-sorted batches by a small budget: every user's
    scores equal its prompt scored alone (batch 1) to 1e-4."""
    model, tok = tiny_llm
    prompts = _per_user_prompts(tok, mode) + _user_prompts(tok, mode, users=9)
    scorer = _budget_scorer(tiny_llm, mode, 1200)
    sizes, handle = _forward_batches(scorer)
    try:
        got = scorer.score_many(prompts)
    finally:
        handle.remove()
    assert len(sizes) > 3 and max(sizes) > 1  # several batches, some of several rows
    alone = _scorer(tiny_llm, mode, candidate_batch_size=6, user_batch_size=1)
    for p, scores in zip(prompts, got, strict=True):
        np.testing.assert_allclose(scores, alone.score(p), atol=1e-4)


def test_budget_batches_in_bfloat16_stay_within_its_rounding(tiny_llm):
    """In bf16 a batch's padding may change the order of sums: scores move by no more than bf16's rounding of a
    log-prob (2^-8 of its size)."""
    model, tok = tiny_llm
    half = (copy.deepcopy(model).to(torch.bfloat16), tok)
    prompts = _per_user_prompts(tok) + _user_prompts(tok, users=9)
    batched = _budget_scorer(half, "likelihood", 1200)
    got = batched.score_many(prompts)
    assert batched.counts.pad_tokens > 0  # rows of different widths shared forward passes
    alone = _scorer(half, candidate_batch_size=6, user_batch_size=1)
    for p, scores in zip(prompts, got, strict=True):
        np.testing.assert_allclose(scores, alone.score(p), rtol=2 ** -8)


def test_counts_hold_the_tokens_run_and_their_pads(tiny_llm):
    """Two users of two demonstration sets: the instruction's prefill, ONE padded prefill of the rest of both
    prefixes, ONE padded forward of both rows; every pad is counted."""
    model, tok = tiny_llm
    prompts = _per_user_prompts(tok)[:2]
    scorer = _scorer(tiny_llm, candidate_batch_size=6, user_batch_size=8)
    scorer.score_many(prompts)
    parts = [encode_parts(tok, p) for p in prompts]
    start = common_start([tuple(prefix) for prefix, _ in parts])
    rests = [len(prefix) - len(start) for prefix, _ in parts]
    rows = [scorer.row_width((tuple(prefix), suffix, [scorer.candidate_ids(p.candidates[i]) for i in p.order]))
            for (prefix, suffix), p in zip(parts, prompts)]
    assert min(rests) < max(rests) and min(rows) < max(rows)  # both passes have pads
    assert scorer.counts.forward_tokens == len(start) + 2 * max(rests) + 2 * max(rows)
    assert scorer.counts.pad_tokens == 2 * max(rests) - sum(rests) + 2 * max(rows) - sum(rows)
    assert scorer.counts.pad_share == scorer.counts.pad_tokens / scorer.counts.forward_tokens


def test_a_gpus_budget_reads_the_card_and_the_model_alone(tiny_llm, monkeypatch):
    """80% of the card less the model's own bytes, rounded down to 256 MiB: not what else the process holds."""
    model = tiny_llm[0]
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 34)  # never read
    held = sum(p.numel() * p.element_size() for p in [*model.parameters(), *model.buffers()])
    want = ((80 << 30) * batching.GPU_MEMORY_SHARE - held) // batching.GPU_BYTES_STEP * batching.GPU_BYTES_STEP
    assert batching.batch_bytes(model) == want


def test_a_budget_also_bounds_the_prefill_of_distinct_prefixes():
    """Six users with their own prefixes of six lengths: the prefill keeps 6 x 6 logit rows, over a budget of 20
    that the forward's 6 x (1 + 0) tokens fit; so batches of 4 (4 x 4 = 16), then 2."""
    prefixes = [(0,) * (k + 1) + (k,) for k in range(6)]
    assert batching.prefill_cost(6, 6) == 36 and batching.prefill_cost(1, 1) == 0
    assert TokenBudget(20).plan(prefixes, [1] * 6) == [[0, 1, 2, 3], [4, 5]]
    assert TokenBudget(40).plan(prefixes, [1] * 6) == [list(range(6))]

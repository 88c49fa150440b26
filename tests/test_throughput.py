"""benchmarks/throughput.py's row on the tiny LLM: every user scored, the tokens run and their pads, the LM head's
rows and the FLOPs they make, and the random-weight shapes' sizes."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import pytest  # noqa: E402

import throughput  # noqa: E402
from shapes import SHAPES  # noqa: E402
from test_scorer import _per_user_prompts  # noqa: E402


@pytest.mark.parametrize("batch", ["1", "auto"])
def test_a_row_scores_every_user_and_counts_its_work(tiny_llm, batch):
    model, tok = tiny_llm
    prompts = _per_user_prompts(tok)
    tokens = [throughput.prompt_tokens(tok, p) for p in prompts]
    row = throughput.measure(model, tok, prompts, tokens, batch, seconds=1e9, device="cpu")
    assert row["users"] == len(prompts)
    assert row["tokens_per_s"] * row["seconds"] == pytest.approx(sum(tokens))
    assert (row["pad_share"] == 0) if batch == "1" else (0 < row["pad_share"] < 0.5)
    assert row["pad_share"] == row["pad_tokens"] / row["forward_tokens"]
    # shared prefixes run once, so fewer real tokens run than the prompts hold; a logit row or more per candidate
    assert 0 < row["forward_tokens"] - row["pad_tokens"] < sum(tokens)
    assert row["head_rows"] >= sum(len(p.candidates) for p in prompts)
    c = model.config  # Kaplan's N from the config: attention, MLP and two norms a layer, and the final norm
    h, kv = c.hidden_size, c.num_key_value_heads * c.head_dim
    n = c.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * c.intermediate_size + 2 * h) + h
    flops = 2 * n * (row["forward_tokens"] - row["pad_tokens"]) + 2 * h * c.vocab_size * row["head_rows"]
    assert row["tflops"] * 1e12 * row["seconds"] == pytest.approx(flops)


def test_head_rows_count_the_logit_positions(tiny_llm):
    import torch

    model, _ = tiny_llm
    head = throughput.HeadRows(model)
    try:
        with torch.no_grad():
            model(input_ids=torch.ones((3, 5), dtype=torch.long))
    finally:
        head.close()
    assert head.rows == 15


def test_the_shapes_are_the_real_models_sizes():
    """Non-embedding parameters of each shape (Kaplan's N): 12 h^2-ish per layer from the config alone."""
    def non_embedding(s):
        h, kv = s["hidden_size"], s["hidden_size"] // s["num_attention_heads"] * s["num_key_value_heads"]
        return s["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * s["intermediate_size"])

    assert round(non_embedding(SHAPES["smollm2-135m"]) / 1e6) == 106
    assert round(non_embedding(SHAPES["qwen2.5-1.5b"]) / 1e9, 2) == 1.31
    assert round(non_embedding(SHAPES["llama-3.1-8b"]) / 1e9, 2) == 6.98


def test_the_equality_line_of_identical_runs_reads_no_difference():
    import gpu_equality

    run = {"scores": [[0.5, 0.2, 0.1], [0.1, 0.9, 0.3]], "ndcg10": [1.0, gpu_equality.ndcg10([0.1, 0.9, 0.3], 0)],
           "users_per_s": 2.0}
    assert run["ndcg10"][1] == 0.5  # the target third of three: rank 2
    line = gpu_equality.compare("nearest", run, run)
    assert line.startswith("| nearest | 2 | 0.7500 | 0.7500 | +0.0000 [+0.0000, +0.0000] | 1.0000 | 0.000 | 100.0% |")


def test_spearman_without_scipy_equals_scipys():
    import numpy as np
    from scipy.stats import spearmanr

    import gpu_equality

    x = np.array([0.1, 0.5, 0.5, 0.2, 0.9, 0.3])
    y = np.array([1.0, 2.0, 0.5, 0.5, 3.0, 0.1])
    assert gpu_equality.spearman(x, y) == pytest.approx(spearmanr(x, y)[0])


def test_a_profile_splits_a_chunks_time_without_counting_any_twice(tiny_llm):
    model, tok = tiny_llm
    line = throughput.profile(model, tok, _per_user_prompts(tok), "cpu")
    assert line.startswith("5 users, ")
    shares = [float(part.rsplit("(", 1)[1].rstrip("%)")) for part in line.split(": ", 1)[1].split("; ")]
    # whole percents: each share rounds by half a percent at most, so a time counted twice shows
    assert len(shares) == len(throughput.KINDS) + 2 and sum(shares) == pytest.approx(100, abs=len(shares) / 2)

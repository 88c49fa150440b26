"""Per layer and head: how well the dual model reproduces the real layer's attention.

For each head of each requested layer, on a real prompt:

* ``linear_rel_err``: linear attention computed directly (masked token sum) vs the dual model's
  test output (W_ZS(t) + dW_ICL) q_t, with dW_ICL from one autograd gradient step. Max over
  query tokens of the per-token relative error; float64, so at rounding level when the identity holds.
* ``grad_step_rel_err``: the autograd step vs the closed form sum_j v_j k_j^T.
* ``icl_share``: mean over queries of ||dW_ICL q|| / ||(W_ZS + dW_ICL) q||, the part of the
  linear output the demonstrations contribute.
* ``softmax_rel_err_M{M}``: unnormalised softmax attention vs the random-feature dual model
  with M features (nested: the first M of one seeded draw). Mean over query tokens of the
  per-token relative error.
* ``rf_exponent``: attention-weighted mean |k + q|^2 of the pairs the softmax check estimates;
  the estimator needs M >> exp(rf_exponent) features, which explains where the error stalls.
* ``demo_norms``: ||dW_ICL part of demonstration j||_F (linear dual model). It depends on the
  key/value head only, so query heads sharing a KV head report the same norms.
* ``attn_recon_rel_err`` (per layer): our float64 rebuild of the layer's attention output vs the
  module's own output captured by a hook, the check that weights, RoPE and GQA are right.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.theory.dual import (
    causal_exp_attention, causal_linear_attention, center_and_balance, demonstration_norms,
    dual_model_outputs, gaussian_projection, outer_sum, random_feature_dual, relative_errors,
    split_positions,
)
from recbole_lrgd.theory.extract import (
    AttentionWeights, HeadStates, capture_layers, extract_attention_weights, project_heads,
    reconstruct_attention_output, rope_tables,
)
from recbole_lrgd.theory.spans import PromptSplit, Span

DEFAULT_NUM_FEATURES: Tuple[int, ...] = tuple(2 ** i for i in range(6, 15))  # 64 .. 16384
Prompt = Union[str, Sequence[int], torch.Tensor]


def feature_column(m: int) -> str:
    """Name of the table column for M random features."""
    return f"softmax_rel_err_M{m}"


def head_seed(seed: int, layer: int, head: int) -> int:
    """One reproducible random-feature seed per (layer, head), independent of which others run."""
    return (seed * 1_000_003 + layer * 1_009 + head) % (2 ** 63)


def head_equivalence(states: HeadStates, weights: AttentionWeights, head: int, split: PromptSplit,
                     num_features: Sequence[int] = DEFAULT_NUM_FEATURES, seed: int = 0,
                     center_keys: bool = True, temperature: float = 1.0) -> Dict[str, object]:
    """All checks for one head (see the module docstring); needs no model, only projections.

    ``center_keys`` applies ``center_and_balance`` before the random features (exact up to a
    per-query factor; lowers the estimator's variance). ``temperature`` multiplies the scores
    of the softmax check only (1 = the real layer); below 1 it shows how the same estimator
    behaves on flatter attention. ``seed`` seeds this head's random features.
    """
    split.validate(states.keys.shape[1])
    ctx, demo, qpos = split_positions(split.demos, split.query)
    g = weights.kv_head(head)
    s = weights.scaling ** 0.5  # fold the 1/sqrt(d) score scaling into keys and queries alike
    keys, values = states.keys[g] * s, states.values[g]
    queries = states.queries[head][qpos] * s

    direct = causal_linear_attention(queries, keys, values, qpos)
    dual = dual_model_outputs(keys, values, queries, ctx, demo, qpos)
    closed = outer_sum(values[demo], keys[demo])
    icl_part = (queries @ dual.delta_w.T).norm(dim=-1) / dual.outputs.norm(dim=-1)
    row: Dict[str, object] = {
        "head": head, "kv_head": g, "n_context": int(ctx.numel()), "n_demo_tokens": int(demo.numel()),
        "n_query": int(qpos.numel()),
        "linear_rel_err": float(relative_errors(dual.outputs, direct).max()),
        "grad_step_rel_err": float((dual.delta_w - closed).norm() / closed.norm().clamp_min(1e-300)),
        "icl_share": float(icl_part.mean()),
    }

    end = split.query[1]
    k_sm, q_sm = keys[:end], queries * temperature
    if center_keys:
        k_sm, q_sm, _ = center_and_balance(k_sm, q_sm)
    exact, shift = causal_exp_attention(q_sm, k_sm, values[:end], qpos)
    row["rf_exponent"] = float(rf_exponent(k_sm, q_sm, qpos))
    gen = torch.Generator().manual_seed(seed)
    projection = gaussian_projection(max(num_features), k_sm.shape[1], gen) if num_features else None
    for m in num_features:
        result, log_scale = random_feature_dual(k_sm, values[:end], q_sm, projection[:m], ctx, demo, qpos)
        estimate = result.outputs * torch.exp(log_scale - shift)[:, None]
        row[feature_column(m)] = float(relative_errors(estimate, exact).mean())
    row["demo_norms"] = [float(x) for x in demonstration_norms(keys, values, split.demos)]
    return row


def rf_exponent(keys: torch.Tensor, queries: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor:
    """Attention-weighted mean of |k_s + q_t|^2 over visible pairs, averaged over queries.

    The positive-feature estimate of exp(k^T q) has relative variance (exp(|k + q|^2) - 1) / M,
    so this exponent says roughly how many features the dominant pairs need: M >> exp(it).
    """
    scores = queries @ keys.T
    mask = torch.arange(keys.shape[0])[None, :] <= query_positions[:, None]
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
    sq = (keys[None, :, :] + queries[:, None, :]).pow(2).sum(-1)
    return (probs * sq).sum(1).mean()


def _input_ids(tokenizer: Any, prompt: Prompt) -> torch.Tensor:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise LRGDError("a text prompt needs a tokenizer")
        return torch.tensor(tokenizer(prompt)["input_ids"], dtype=torch.long)
    return torch.as_tensor(prompt, dtype=torch.long).reshape(-1)


def equivalence_table(model: torch.nn.Module, tokenizer: Any, prompt: Prompt, demo_spans: Sequence[Span], query_span: Span,
                      layers: Sequence[int] = (0,), num_features: Sequence[int] = DEFAULT_NUM_FEATURES,
                      seed: int = 0, center_keys: bool = True, temperature: float = 1.0) -> List[Dict[str, object]]:
    """Run ``prompt`` through ``model`` and check the dual-model identities per layer and head.

    ``prompt`` is text (tokenised with ``tokenizer``, default special tokens) or input ids;
    ``demo_spans``/``query_span`` are half-open token ranges into it (``split_prompt`` finds
    them from text). Returns one dict per (layer, head); see the module docstring for keys.
    """
    ids = _input_ids(tokenizer, prompt)
    split = PromptSplit(demo_spans, query_span).validate(len(ids))
    captures = capture_layers(model, ids, layers)
    cos, sin = rope_tables(model, torch.arange(len(ids)))
    rows: List[Dict[str, object]] = []
    for layer in layers:
        weights = extract_attention_weights(model, layer)
        cap = captures[layer]
        states = project_heads(cap.hidden, weights, cos, sin)
        rebuilt = reconstruct_attention_output(states, weights)
        recon = float((rebuilt - cap.attn_output).norm() / cap.attn_output.norm())
        for head in range(weights.num_heads):
            row = head_equivalence(states, weights, head, split, num_features,
                                   seed=head_seed(seed, layer, head), center_keys=center_keys,
                                   temperature=temperature)
            rows.append({"layer": layer, **row, "attn_recon_rel_err": recon})
    return rows


def demo_update_norms(model: torch.nn.Module, input_ids: Prompt, demo_spans: Sequence[Span], query_span: Span,
                      layers: Optional[Sequence[int]] = None) -> torch.Tensor:
    """||dW_ICL part of each demonstration||_F, shape (layers, heads, demonstrations).

    How far each demonstration moves the linear dual model, per layer and head: one forward pass, no
    random features. A diagnostic only: LRGD's demonstration optimizer does not use it (it measures
    Effect with the LLM's scores). ``layers`` defaults to all layers.
    """
    ids = _input_ids(None, input_ids)
    split = PromptSplit(demo_spans, query_span).validate(len(ids))
    if layers is None:
        layers = range(model.config.num_hidden_layers)
    layers = list(layers)
    captures = capture_layers(model, ids, layers)
    cos, sin = rope_tables(model, torch.arange(len(ids)))
    out = []
    for layer in layers:
        weights = extract_attention_weights(model, layer)
        states = project_heads(captures[layer].hidden, weights, cos, sin)
        s = weights.scaling ** 0.5
        out.append(torch.stack([
            demonstration_norms(states.keys[weights.kv_head(h)] * s, states.values[weights.kv_head(h)], split.demos)
            for h in range(weights.num_heads)
        ]))
    return torch.stack(out)


def summarize(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per layer: max linear error, max reconstruction error, mean and median softmax error per M."""
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        rs = [r for r in rows if r["layer"] == layer]
        cols = sorted((k for k in rs[0] if k.startswith("softmax_rel_err_M")), key=lambda k: int(k.rsplit("M", 1)[1]))
        out.append({
            "layer": layer,
            "linear_rel_err_max": max(r["linear_rel_err"] for r in rs),
            "grad_step_rel_err_max": max(r["grad_step_rel_err"] for r in rs),
            "attn_recon_rel_err": rs[0]["attn_recon_rel_err"],
            "softmax_mean": {int(c.rsplit("M", 1)[1]): statistics.fmean(r[c] for r in rs) for c in cols},
            "softmax_median": {int(c.rsplit("M", 1)[1]): statistics.median(r[c] for r in rs) for c in cols},
        })
    return out


def _fmt(x: float) -> str:
    return f"{x:8.3g}" if math.isfinite(x) else f"{x!s:>8}"


def format_table(rows: Sequence[Dict[str, object]]) -> str:
    """One line per (layer, head)."""
    if not rows:
        return ""
    cols = [k for k in rows[0] if k.startswith("softmax_rel_err_M")]
    head = f"{'layer':>5} {'head':>4} {'kv':>2} {'lin_err':>8} {'grad_err':>8} {'icl_shr':>8} {'rf_exp':>8} " + \
        " ".join(f"{'M' + c.rsplit('M', 1)[1]:>8}" for c in cols) + "  demo_norms"
    lines = [head]
    for r in rows:
        lines.append(f"{r['layer']:>5} {r['head']:>4} {r['kv_head']:>2} {_fmt(r['linear_rel_err'])} "
                     f"{_fmt(r['grad_step_rel_err'])} {_fmt(r['icl_share'])} {_fmt(r['rf_exponent'])} "
                     + " ".join(_fmt(r[c]) for c in cols) + "  "
                     + ", ".join(f"{x:.3g}" for x in r["demo_norms"]))
    return "\n".join(lines)


def format_summary(summary: Sequence[Dict[str, object]]) -> str:
    """Per layer: max linear error and the softmax error per M (mean and median over heads)."""
    lines = []
    for s in summary:
        lines.append(f"layer {s['layer']}: linear max rel err {s['linear_rel_err_max']:.2e}, "
                     f"grad-step max rel err {s['grad_step_rel_err_max']:.2e}, "
                     f"attention rebuild rel err {s['attn_recon_rel_err']:.2e}")
        ms = list(s["softmax_mean"])
        if ms:
            lines.append("  M:              " + " ".join(f"{m:>7}" for m in ms))
            lines.append("  softmax mean:   " + " ".join(f"{s['softmax_mean'][m]:7.3f}" for m in ms))
            lines.append("  softmax median: " + " ".join(f"{s['softmax_median'][m]:7.3f}" for m in ms))
    return "\n".join(lines)

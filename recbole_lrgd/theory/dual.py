"""Pure tensor math of the dual-model view of attention (``docs/theory.md``; the paper's section 2).

Nothing here touches a model: every function takes plain tensors, so each piece (RoPE, the
causal attention sums, W_ZS, the gradient step that gives dW_ICL, random features) can be
tested on random numbers. Shapes use T for sequence length, d for the head size, M for the
number of random features.

Conventions
-----------
* ``keys``/``queries`` passed to the dual-model functions are already rotated by RoPE and
  already carry the attention scaling: both are multiplied by ``sqrt(scaling)`` (=
  ``d**-0.25`` for Llama), so ``k^T q`` is the score the layer puts into its softmax. This is
  the one place where the scaling enters, so the linear and the softmax checks agree on it.
* Query tokens come after every demonstration token. A query at position t attends to the
  context (non-demonstration) tokens before the query span, to all demonstration tokens, and to
  the query-span tokens at positions <= t (causal mask). The query-span tokens belong to the
  zero-shot part: W_ZS(t) grows with t, dW_ICL does not depend on t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

Span = Tuple[int, int]


# --------------------------------------------------------------------------------------------
# RoPE


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF Llama's ``rotate_half``: (x1, x2) -> (-x2, x1) on the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., T, d) by position with the model's ``cos``/``sin`` tables (T, d).

    Same formula as HF's ``apply_rotary_pos_emb``; the rotation R_t is orthogonal, so keys and
    queries keep their norms and ``(R_s k)^T (R_t q)`` depends only on t - s.
    """
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------------------------
# Direct (token-sum) attention: the left-hand sides of the identities


def causal_linear_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                            query_positions: torch.Tensor) -> torch.Tensor:
    """sum_{s <= t} v_s (k_s^T q_t) for each query position t: linear attention, no softmax.

    ``queries`` (n_q, d) are the queries at ``query_positions``; ``keys``/``values`` (T, d) cover
    the whole prompt. Computed as a masked score matrix, independently of any prompt split.
    """
    scores = queries @ keys.T  # (n_q, T)
    mask = torch.arange(keys.shape[0], device=keys.device)[None, :] <= query_positions[:, None]
    return (scores * mask) @ values


def causal_exp_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         query_positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised softmax attention sum_{s <= t} v_s exp(k_s^T q_t), in shifted form.

    Returns ``(out, shift)`` with ``out[t] * exp(shift[t])`` the exact sum; ``shift[t]`` is the
    largest visible score of query t, so nothing overflows. Dividing ``out`` by its own row of
    weights gives the layer's (normalised) softmax output.
    """
    scores = queries @ keys.T
    mask = torch.arange(keys.shape[0], device=keys.device)[None, :] <= query_positions[:, None]
    scores = scores.masked_fill(~mask, float("-inf"))
    shift = scores.max(dim=1).values
    return torch.exp(scores - shift[:, None]) @ values, shift


def causal_softmax_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Normalised causal softmax attention of a full sequence (T, d): what one head computes."""
    positions = torch.arange(queries.shape[0], device=queries.device)
    out, _ = causal_exp_attention(queries, keys, torch.cat([values, torch.ones_like(values[:, :1])], 1), positions)
    return out[:, :-1] / out[:, -1:]


# --------------------------------------------------------------------------------------------
# The dual model F(z) = W phi(z)


def outer_sum(values: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """sum_j v_j phi_j^T (d_v, F): the weight a set of tokens writes into the dual model."""
    return values.T @ features


def dual_loss(weight: torch.Tensor, key_features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """L(W) = -sum_j v_j^T W phi(k_j): the dual model's training loss on demonstrations."""
    return -(values * (key_features @ weight.T)).sum()


def gradient_step(weight: torch.Tensor, key_features: torch.Tensor, values: torch.Tensor,
                  lr: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of gradient descent on ``dual_loss`` from ``weight``, by torch.autograd.

    Returns ``(new_weight, delta)``. With rate 1 the delta is dW_ICL = sum_j v_j phi(k_j)^T;
    it is computed here from the gradient, not from that closed form, so comparing the result
    with the direct attention sum checks the "ICL = one gradient step" claim itself.
    """
    w = weight.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dual_loss(w, key_features, values), w)
    new_weight = weight.detach() - lr * grad
    return new_weight, new_weight - weight.detach()


@dataclass
class DualResult:
    """The dual model built from one head: weights before/after the ICL step and its outputs.

    ``w_zs`` is the zero-shot weight of the context before the query span; query t also adds
    the query-span tokens up to itself, so its full zero-shot weight is
    W_ZS(t) = w_zs + sum_{query-span s <= t} v_s phi(k_s)^T.
    """

    w_zs: torch.Tensor
    delta_w: torch.Tensor
    outputs: torch.Tensor  # (n_q, d_v): (W_ZS(t) + dW_ICL) phi(q_t)
    zero_shot_outputs: torch.Tensor  # (n_q, d_v): W_ZS(t) phi(q_t)


def dual_model_outputs(key_features: torch.Tensor, values: torch.Tensor, query_features: torch.Tensor,
                       context_positions: torch.Tensor, demo_positions: torch.Tensor,
                       query_positions: torch.Tensor) -> DualResult:
    """Train the dual model on the demonstrations (one gradient step) and test it on the queries.

    ``key_features`` (T, F) are phi(k_s) for every position (phi = identity for linear
    attention), ``query_features`` (n_q, F) are phi(q_t) at ``query_positions``. Context
    positions must all precede the query span, and so must the demonstrations.
    """
    first_query = int(query_positions.min())
    if any(p.numel() and int(p.max()) >= first_query for p in (context_positions, demo_positions)):
        raise ValueError("context and demonstration tokens must all precede the query tokens")
    w_zs = outer_sum(values[context_positions], key_features[context_positions])
    _, delta_w = gradient_step(w_zs, key_features[demo_positions], values[demo_positions])
    trained = w_zs + delta_w
    # Query-span tokens s <= t: the causal, growing part of W_ZS(t), applied without forming
    # one (d, F) matrix per query.
    qk = key_features[query_positions]
    prefix = torch.tril(query_features @ qk.T) @ values[query_positions]  # (n_q, d_v)
    zero_shot = query_features @ w_zs.T + prefix
    return DualResult(w_zs=w_zs, delta_w=delta_w, outputs=query_features @ trained.T + prefix,
                      zero_shot_outputs=zero_shot)


def demonstration_norms(keys: torch.Tensor, values: torch.Tensor, demo_spans: Sequence[Span]) -> torch.Tensor:
    """||sum_{s in demo j} v_s k_s^T||_F for each demonstration j: its share of dW_ICL.

    The shares add up to dW_ICL (linear dual model), so the norm says how far a demonstration
    moves the dual model.
    """
    norms = [torch.linalg.matrix_norm(outer_sum(values[a:b], keys[a:b])) for a, b in demo_spans]
    return torch.stack(norms) if norms else keys.new_zeros(0)


# --------------------------------------------------------------------------------------------
# Positive random features for the softmax kernel


def gaussian_projection(num_features: int, dim: int, generator: torch.Generator,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rows w_m ~ N(0, I_d), shape (M, d). Smaller M reuse the first rows (nested estimates)."""
    return torch.randn(num_features, dim, generator=generator, dtype=dtype)


def log_positive_features(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """log of phi_M(x)_m = exp(w_m^T x - |x|^2/2) / sqrt(M), shape (..., M).

    E_w[phi(k)^T phi(q)] = exp(k^T q), all features positive (Performer's FAVOR+ map). Kept in
    the log domain so callers can subtract a shift before exponentiating.
    """
    m = projection.shape[0]
    return x @ projection.T - 0.5 * (x * x).sum(-1, keepdim=True) - 0.5 * math.log(m)


def positive_random_features(x: torch.Tensor, projection: torch.Tensor,
                             shift: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """phi_M(x) * exp(-shift) and the ``shift`` used (default: the max log-feature of all rows).

    One shift for all rows keeps their relative sizes (it is a common factor of the dual
    model's weight); it only keeps exp() finite.
    """
    logf = log_positive_features(x, projection)
    if shift is None:
        shift = logf.max()
    return torch.exp(logf - shift), shift


def random_feature_dual(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor,
                        projection: torch.Tensor, context_positions: torch.Tensor,
                        demo_positions: torch.Tensor, query_positions: torch.Tensor) -> Tuple[DualResult, torch.Tensor]:
    """Dual model F(z) = W phi_M(z) for softmax attention, in shifted form.

    Returns ``(result, log_scale)``: ``result.outputs[t] * exp(log_scale[t])`` estimates the
    unnormalised attention sum_{s <= t} v_s exp(k_s^T q_t).

    Numerics (float64 throughout): features are exponentiated after subtracting a shift, one
    global scalar c_K for all keys (it is a common factor of W, like a learning rate) and one
    scalar c_t per query (the query's max log-feature). Both factors are put back only through
    ``log_scale``, so no exp() overflows even when ``|k|`` and ``|q|`` are large; a per-query
    scale never changes a per-query relative error.
    """
    key_feat, key_shift = positive_random_features(keys, projection)
    logq = log_positive_features(queries, projection)
    q_shift = logq.max(dim=1).values
    query_feat = torch.exp(logq - q_shift[:, None])
    result = dual_model_outputs(key_feat, values, query_feat, context_positions, demo_positions, query_positions)
    return result, key_shift + q_shift


def center_and_balance(keys: torch.Tensor, queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact reparametrisation of the kernel that keeps random-feature variance small.

    exp(k^T q) = exp(mu^T q) * exp((a (k - mu))^T (q / a)) for any mean key ``mu`` and scale a.
    The first factor is one scalar per query: it cancels in the softmax (like its denominator)
    and in every per-query relative error. Centering removes the large component all keys
    share; a^2 = rms|q| / rms|k - mu| balances the norms. The positive-feature estimator's
    relative variance grows like exp(|k + q|^2), so both matter on real LLM heads.

    Returns ``(keys', queries', log_factor)`` with exp(k_s^T q_t) = exp(log_factor[t]) *
    exp(keys'_s^T queries'_t).
    """
    mu = keys.mean(dim=0)
    centered = keys - mu
    k_rms = centered.pow(2).sum(-1).mean().sqrt()
    q_rms = queries.pow(2).sum(-1).mean().sqrt()
    a = torch.sqrt(q_rms / k_rms) if float(k_rms) > 0 and float(q_rms) > 0 else keys.new_tensor(1.0)
    return centered * a, queries / a, queries @ mu


# --------------------------------------------------------------------------------------------
# Errors


def relative_errors(estimate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """||estimate_t - exact_t|| / ||exact_t|| per row t (invariant to a per-row scale)."""
    return (estimate - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(torch.finfo(exact.dtype).tiny)


def split_positions(demo_spans: Sequence[Span], query_span: Span,
                    device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(context, demonstration, query) position tensors of a prompt split; see ``PromptSplit``."""
    q0, q1 = query_span
    demo = sorted(i for a, b in demo_spans for i in range(a, b))
    demo_set = set(demo)
    context = [i for i in range(q0) if i not in demo_set]
    as_t = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
    return as_t(context), as_t(demo), as_t(list(range(q0, q1)))


__all__: List[str] = [
    "apply_rope", "rotate_half", "causal_linear_attention", "causal_exp_attention",
    "causal_softmax_attention", "outer_sum", "dual_loss", "gradient_step", "DualResult",
    "dual_model_outputs", "demonstration_norms", "gaussian_projection", "log_positive_features",
    "positive_random_features", "random_feature_dual", "center_and_balance", "relative_errors",
    "split_positions"
]

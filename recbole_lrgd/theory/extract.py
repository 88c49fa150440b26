"""Take one attention layer apart: weights, the hidden states it sees, and its RoPE tables.

Works for Hugging Face Llama-family decoders (``model.model.layers[i].self_attn`` with
``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``model.model.rotary_emb``): Llama, SmolLM,
Mistral, Qwen2 (projection biases) and Qwen3 (per-head q/k RMSNorm) all fit. Everything is cast
to float64 so the identities can be checked to float precision.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.theory.dual import apply_rope, causal_softmax_attention

F64 = torch.float64


@dataclass
class AttentionWeights:
    """One layer's attention parameters, split per head, in float64.

    ``w_q``: (H, d, D), ``w_k``/``w_v``: (G, d, D) with G key/value heads (grouped-query
    attention: query head h reads KV head h // (H // G)), ``w_o``: (D, H*d). Biases are None
    when the layer has none; ``q_norm``/``k_norm`` are Qwen3-style per-head norms or None.
    """

    w_q: torch.Tensor
    w_k: torch.Tensor
    w_v: torch.Tensor
    w_o: torch.Tensor
    b_q: Optional[torch.Tensor]
    b_k: Optional[torch.Tensor]
    b_v: Optional[torch.Tensor]
    b_o: Optional[torch.Tensor]
    scaling: float
    q_norm: Optional[nn.Module] = None
    k_norm: Optional[nn.Module] = None

    @property
    def num_heads(self) -> int:
        return self.w_q.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.w_k.shape[0]

    @property
    def head_dim(self) -> int:
        return self.w_q.shape[1]

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` shares (grouped-query attention)."""
        return head // (self.num_heads // self.num_kv_heads)


@dataclass
class HeadStates:
    """Per-head projections of a prompt: queries (H, T, d), keys and values (G, T, d).

    Queries and keys are RoPE-rotated by their own positions; no attention scaling applied.
    """

    queries: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (``model.model.layers``)."""
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise LRGDError(f"{type(model).__name__} has no model.layers: not a Llama-family decoder")
    return layers


def extract_attention_weights(model: nn.Module, layer: int) -> AttentionWeights:
    """Copy W_Q, W_K, W_V, W_O (and biases, q/k norms) of ``layer`` as float64 per-head tensors."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise LRGDError(f"layer {layer} out of range: the model has {len(layers)} layers")
    attn = layers[layer].self_attn
    cfg = model.config
    num_heads = cfg.num_attention_heads
    num_kv = getattr(cfg, "num_key_value_heads", None) or num_heads
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // num_heads

    def w(lin: nn.Linear, heads: int) -> torch.Tensor:
        return lin.weight.detach().to(F64).reshape(heads, head_dim, -1).clone()

    def b(lin: nn.Linear, heads: Optional[int] = None) -> Optional[torch.Tensor]:
        if lin.bias is None:
            return None
        bias = lin.bias.detach().to(F64).clone()
        return bias.reshape(heads, head_dim) if heads else bias

    def norm(name: str) -> Optional[nn.Module]:
        mod = getattr(attn, name, None)
        if mod is None or isinstance(mod, nn.Identity):
            return None
        return copy.deepcopy(mod).to(F64).eval().requires_grad_(False)

    scaling = float(getattr(attn, "scaling", head_dim ** -0.5))
    return AttentionWeights(
        w_q=w(attn.q_proj, num_heads), w_k=w(attn.k_proj, num_kv), w_v=w(attn.v_proj, num_kv),
        w_o=attn.o_proj.weight.detach().to(F64).clone(),
        b_q=b(attn.q_proj, num_heads), b_k=b(attn.k_proj, num_kv), b_v=b(attn.v_proj, num_kv),
        b_o=b(attn.o_proj), scaling=scaling, q_norm=norm("q_norm"), k_norm=norm("k_norm"),
    )


def rope_tables(model: nn.Module, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, d) from the model's own rotary module at ``positions``, as float64.

    Uses ``model.model.rotary_emb(x, position_ids)`` so RoPE variants (scaling types,
    ``attention_scaling``) come out as the model computes them.
    """
    base = getattr(model, "model", model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise LRGDError(f"{type(model).__name__} has no model.rotary_emb: RoPE tables unavailable")
    param = next(model.parameters())
    dummy = torch.zeros(1, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        cos, sin = rotary(dummy, positions.to(param.device).reshape(1, -1))
    return cos[0].to(F64).cpu(), sin[0].to(F64).cpu()


def _heads(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    out = torch.einsum("td,hed->hte", x, w)
    return out + bias[:, None, :] if bias is not None else out


def project_heads(hidden: torch.Tensor, weights: AttentionWeights, cos: torch.Tensor, sin: torch.Tensor) -> HeadStates:
    """Per-head q, k, v of hidden states ``hidden`` (T, D) (the layer's post-norm input).

    Queries are rotated by R_t and keys by R_s at their own positions (rows of cos/sin).
    """
    x = hidden.to(F64)
    q = _heads(x, weights.w_q, weights.b_q)
    k = _heads(x, weights.w_k, weights.b_k)
    v = _heads(x, weights.w_v, weights.b_v)
    if weights.q_norm is not None:
        q = weights.q_norm(q)
    if weights.k_norm is not None:
        k = weights.k_norm(k)
    return HeadStates(queries=apply_rope(q, cos, sin), keys=apply_rope(k, cos, sin), values=v)


def reconstruct_attention_output(states: HeadStates, weights: AttentionWeights) -> torch.Tensor:
    """The layer's self-attention output (T, D) rebuilt from its parts: causal softmax per head,
    heads concatenated, times W_O. Matching the real module checks weights, RoPE and GQA."""
    s = weights.scaling ** 0.5
    heads = [
        causal_softmax_attention(states.queries[h] * s, states.keys[weights.kv_head(h)] * s,
                                 states.values[weights.kv_head(h)])
        for h in range(weights.num_heads)
    ]
    out = torch.cat(heads, dim=-1) @ weights.w_o.T
    return out + weights.b_o if weights.b_o is not None else out


@dataclass
class LayerCapture:
    """What one layer saw and produced on a prompt: post-norm input and attention output (T, D)."""

    hidden: torch.Tensor
    attn_output: torch.Tensor


class _StopForward(Exception):
    """Raised by the last capture hook to end the forward pass early."""


def capture_layers(model: nn.Module, input_ids: torch.Tensor, layers: Iterable[int]) -> Dict[int, LayerCapture]:
    """Run the prompt once and record, per layer, the input of its attention (after the input
    RMSNorm: what q_proj/k_proj/v_proj see) and the attention module's output. The pass stops
    right after the last requested layer's attention."""
    blocks = decoder_layers(model)
    wanted = sorted(set(int(i) for i in layers))
    for i in wanted:
        if not 0 <= i < len(blocks):
            raise LRGDError(f"layer {i} out of range: the model has {len(blocks)} layers")
    last = wanted[-1]
    seen: Dict[int, torch.Tensor] = {}
    out: Dict[int, torch.Tensor] = {}
    handles = []

    def pre_hook(i):
        def hook(module, args, kwargs):
            h = kwargs.get("hidden_states", args[0] if args else None)
            seen[i] = h.detach()[0].to(F64).cpu()
        return hook

    def post_hook(i):
        def hook(module, args, kwargs, output):
            o = output[0] if isinstance(output, (tuple, list)) else output
            out[i] = o.detach()[0].to(F64).cpu()
            if i == last:
                raise _StopForward  # later layers and the LM head are not needed
        return hook

    try:
        for i in wanted:
            attn = blocks[i].self_attn
            handles.append(attn.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(attn.register_forward_hook(post_hook(i), with_kwargs=True))
        ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(next(model.parameters()).device)
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return {i: LayerCapture(hidden=seen[i], attn_output=out[i]) for i in wanted}


__all__ = [
    "AttentionWeights", "HeadStates", "LayerCapture", "decoder_layers", "extract_attention_weights",
    "rope_tables", "project_heads", "reconstruct_attention_output", "capture_layers",
]

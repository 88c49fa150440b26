"""Which rows share a forward pass: a fixed number of rows (``user_batch_size: 8``), or as many as a token
budget holds, rows of like length together (``user_batch_size: auto``).

A row is one user's suffix (and, in likelihood mode, its packed candidates) run on its prefix's KV cache. Its
own tokens cost memory in every layer and, above all, in the logits over the vocabulary; a prefix token costs
only its keys and values (``prefix_weight`` of an own token). A batch costs its rows times its padded row: the
longest own part plus the weighted longest prefix. Callers hand the scorer a chunk of users at a time
(``chunk_users``); a plan reads that chunk's rows alone, never what ran before or on another process, so a
chunk scores the same wherever it is dealt (exact sharding).

The budget is a number of bytes over an own token's (``token_bytes``): fixed on a CPU (where wide batches only
add page faults and cache misses to the logits), and on a GPU a share of the card's memory less what the process
holds when the scorer is built (the weights): both the same on every rank and in every run of one card and model,
so the plan, and the scores, are too.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Sequence, Set, Tuple, Union

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PretrainedConfig


AUTO = "auto"
CPU_BATCH_BYTES = 5 << 28  # 1.25 GiB a CPU forward may fill: wider CPU batches run slower (docs/performance.md)
GPU_MEMORY_SHARE = 0.8  # of the card's memory a forward pass may fill, the weights included
MIN_TOKEN_BUDGET, MAX_TOKEN_BUDGET = 256, 1 << 20
GPU_BYTES_STEP = 1 << 28  # a GPU's budget is rounded down to 256 MiB: a card's few stray bytes do not move it
SHARED_PREFIX_ROWS = 8  # under a budget, a prefix with this many rows of a chunk gets batches of its own
TOKENS_PER_CHUNK_USER = 64  # a chunk holds budget / 64 users: a few batches' worth of rows to sort by length
MIN_CHUNK_USERS, MAX_CHUNK_USERS = 8, 512


@dataclass(frozen=True)
class FixedBatches:
    """``size`` rows a batch. A prefix with at least ``size`` rows (a demonstration set shared by a chunk of
    users) has batches of its own, on its kept cache; the other rows (per-user demonstrations, a short chunk)
    share batches in their order, whatever their prefixes."""

    size: int

    @property
    def chunk_users(self) -> int:
        return self.size

    def __str__(self) -> str:
        return f"{self.size} rows a forward pass"

    def plan(self, prefixes: Sequence[tuple], widths: Sequence[int]) -> List[List[int]]:
        own, mixed = split_by_prefix(prefixes, self.size)
        return [rows[s: s + self.size] for rows in own + [mixed] for s in range(0, len(rows), self.size)]


@dataclass(frozen=True)
class TokenBudget:
    """Batches of at most ``tokens`` padded own tokens (a prefix token counting ``prefix_weight`` of one), rows
    sorted by length so that few are pads. A prefix with ``SHARED_PREFIX_ROWS`` rows has batches of its own (on
    its kept cache); the other rows share batches whatever their prefixes. A row over the budget runs alone."""

    tokens: int
    prefix_weight: float = 0.0

    @property
    def chunk_users(self) -> int:
        return min(MAX_CHUNK_USERS, max(MIN_CHUNK_USERS, self.tokens // TOKENS_PER_CHUNK_USER))

    def __str__(self) -> str:
        return f"auto: up to {self.tokens:,} padded tokens a forward pass, {self.chunk_users} users a chunk"

    def plan(self, prefixes: Sequence[tuple], widths: Sequence[int]) -> List[List[int]]:
        own, mixed = split_by_prefix(prefixes, SHARED_PREFIX_ROWS)
        return [batch for rows in own + [mixed] if rows for batch in self._fill(rows, prefixes, widths)]

    def _fill(self, rows: List[int], prefixes: Sequence[tuple], widths: Sequence[int]) -> List[List[int]]:
        """``rows`` by cost (own tokens + weighted prefix, then index), cut where the next row would overflow the
        forward pass or the prefill of the batch's distinct prefixes (``prefill_cost``)."""
        batches: List[List[int]] = [[]]
        span = width = 0
        distinct: Set[tuple] = set()  # the batch's prefixes, and their lengths: what its prefill keeps
        lengths: Set[int] = set()
        for r in sorted(rows, key=lambda r: (widths[r] + self.prefix_weight * len(prefixes[r]), r)):
            grown_span, grown_width = max(span, len(prefixes[r])), max(width, widths[r])
            forward = (len(batches[-1]) + 1) * (grown_width + self.prefix_weight * grown_span)
            prefill = prefill_cost(len(distinct | {prefixes[r]}), len(lengths | {len(prefixes[r])}))
            if batches[-1] and max(forward, prefill) > self.tokens:
                batches.append([])
                grown_span, grown_width = len(prefixes[r]), widths[r]
                distinct, lengths = set(), set()
            batches[-1].append(r)
            distinct.add(prefixes[r])
            lengths.add(len(prefixes[r]))
            span, width = grown_span, grown_width
        return [sorted(batch) for batch in batches]


Batching = Union[FixedBatches, TokenBudget]


def prefill_cost(distinct: int, lengths: int) -> int:
    """Logit rows, in own tokens' worth, of the one padded prefill of a batch's ``distinct`` prefixes of ``lengths``
    distinct lengths: it keeps the logits of every prefix at every one of those lengths (``KVModel.prefill``); one
    prefix is kept, not prefilled."""
    return 0 if distinct < 2 else distinct * lengths


def split_by_prefix(prefixes: Sequence[tuple], shared: int) -> Tuple[List[List[int]], List[int]]:
    """Rows grouped by prefix: the groups of at least ``shared`` rows, and the other rows in order."""
    by_prefix: "OrderedDict[tuple, List[int]]" = OrderedDict()
    for r, prefix in enumerate(prefixes):
        by_prefix.setdefault(prefix, []).append(r)
    own = [rows for rows in by_prefix.values() if len(rows) >= shared]
    mixed = sorted(r for rows in by_prefix.values() if len(rows) < shared for r in rows)
    return own, mixed


def make_batching(user_batch_size: Union[int, str], model: PreTrainedModel) -> Batching:
    """``FixedBatches`` of an integer ``user_batch_size``; for ``auto``, the ``TokenBudget`` of ``model`` on its
    device: ``batch_bytes`` over ``token_bytes``, a prefix token weighing its keys and values."""
    if user_batch_size != AUTO:
        return FixedBatches(max(1, int(user_batch_size)))
    kv, own = token_bytes(model.config, model.dtype)
    tokens = min(MAX_TOKEN_BUDGET, max(MIN_TOKEN_BUDGET, int(batch_bytes(model) // own)))
    return TokenBudget(tokens, prefix_weight=round(kv / own, 4))


def batch_bytes(model: PreTrainedModel) -> float:
    """Memory a forward pass may fill: ``CPU_BATCH_BYTES`` on a CPU; on a GPU the card's memory share less the
    model's own weights and buffers (not what the process happens to hold: a trained prior, another rank's
    buffers), so every rank and every run of one card and model gets the same budget."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return CPU_BATCH_BYTES
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    share = torch.cuda.get_device_properties(device).total_memory * GPU_MEMORY_SHARE - held
    return max(0.0, share // GPU_BYTES_STEP * GPU_BYTES_STEP)


def token_bytes(config: PretrainedConfig, dtype: torch.dtype) -> Tuple[int, int]:
    """Memory a prefix token holds in a batch (its keys and values in every layer) and a row's own token (those,
    the widest activations of a layer: the MLP's three projections, the attention's and the residual's, and its
    logits over the vocabulary in the model's dtype, in float32 and the log-sum-exp's float32 temporary; an upper
    bound, as only the candidates' positions keep logits)."""
    size = torch.finfo(dtype).bits // 8
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim * size
    activations = (3 * config.intermediate_size + 4 * config.hidden_size) * size
    logits = config.vocab_size * (size + 4 + 4)
    return kv, kv + activations + logits

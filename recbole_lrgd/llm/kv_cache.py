"""A causal LM run on KV caches: the one place that knows transformers' cache API.

Supported: transformers >= 4.45, whose models take and return a ``DynamicCache``. What differs across
those versions is handled here and nowhere else:

- the forward's cache argument and output attribute: ``past_key_values``, or ``cache`` in recent 5.x;
- ``logits_to_keep`` (a tensor of positions) where the forward takes it; otherwise every position's
  logits are computed and the kept ones sliced out;
- before 4.47 a forward given no cache returns a legacy tuple: it is converted to a ``DynamicCache``.

``DynamicCache.crop`` of a negative count removes that many tokens in every supported version.
"""
from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache, GenerationConfig, PreTrainedModel


class KVModel:
    """A causal LM's forward on a KV cache, with positions, a boolean attention mask and kept logits."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keeps_logits = "logits_to_keep" in params

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, ids: torch.Tensor, cache: Optional[DynamicCache] = None, *,
                positions: Optional[torch.Tensor] = None, allowed: Optional[torch.Tensor] = None,
                keep: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, DynamicCache]:
        """Float logits and the cache after running ``ids`` (B, T) on ``cache`` (appended to in place).

        ``positions`` (B, T) default to following the cache; ``allowed`` (B, T, cached + T) says what each
        token may attend to (default causal); ``keep`` lists the positions whose logits are returned
        (default all): the result is (B, len(keep), V).
        """
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        if positions is not None:
            kwargs["position_ids"] = positions.to(self.device)
        if allowed is not None:
            mask = torch.zeros(allowed.shape, dtype=self.model.dtype)
            mask.masked_fill_(~allowed, torch.finfo(self.model.dtype).min)
            kwargs["attention_mask"] = mask[:, None].to(self.device)
        if keep is not None and self._keeps_logits:
            kwargs["logits_to_keep"] = torch.tensor(list(keep), device=self.device)
        out = self.model(input_ids=ids.to(self.device), use_cache=True, **kwargs)
        logits = out.logits if keep is None or self._keeps_logits else out.logits[:, list(keep)]
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if isinstance(cache, tuple):
            from transformers import DynamicCache

            cache = DynamicCache.from_legacy_cache(cache)
        return logits.float(), cache

    @staticmethod
    def crop(cache: DynamicCache, length: int) -> None:
        """Keep the first ``length`` tokens of ``cache``."""
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)

    @staticmethod
    def expand(cache: DynamicCache, batch: int) -> DynamicCache:
        """A copy of a one-row cache repeated to ``batch`` rows; ``cache`` itself is left as it was."""
        copied = copy.deepcopy(cache)
        copied.batch_repeat_interleave(batch)
        return copied

    def select(self, cache: DynamicCache, rows: Sequence[int]) -> DynamicCache:
        """``cache`` with its rows replaced by rows ``rows`` of it, in that order (a row may repeat)."""
        cache.batch_select_indices(torch.tensor(list(rows), device=self.device))
        return cache

    def prefill(self, prompts: Sequence[Sequence[int]], pad: int = 0, cache: Optional[DynamicCache] = None
                ) -> Tuple[DynamicCache, torch.Tensor]:
        """The KV cache of ``prompts``, one row each, right-padded with ``pad`` to the longest, and each
        prompt's logits at its last token (rows, V): what comes next. With ``cache`` (one row per prompt)
        the prompts continue it and the result is that cache, appended to.

        Causal attention keeps every real token from the pads after it, so a row's real part is what the
        prompt alone would give; whoever attends to the cache later must mask the pads. One prompt runs
        unpadded.
        """
        lengths = [len(ids) for ids in prompts]
        ids = torch.full((len(prompts), max(lengths)), pad, dtype=torch.long)
        for b, row in enumerate(prompts):
            ids[b, : lengths[b]] = torch.as_tensor(list(row), dtype=torch.long)
        keep = sorted({n - 1 for n in lengths})
        logits, cache = self.forward(ids, cache, keep=keep)
        at = [keep.index(n - 1) for n in lengths]
        return cache, logits[torch.arange(len(prompts)), at]

    def generate(self, ids: torch.Tensor, cache: DynamicCache, config: GenerationConfig) -> torch.Tensor:
        """``model.generate`` continuing ``ids`` (1, T), whose first tokens ``cache`` holds (appended to)."""
        return self.model.generate(input_ids=ids.to(self.device), attention_mask=torch.ones_like(ids).to(self.device),
                                   generation_config=config, **{self._cache_kw: cache})


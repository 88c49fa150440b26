"""Tensors written as safetensors shards with their index, one shard in memory at a time: the common end of the
lean conversions (a folder cast to another dtype, ``cast_folder.py``; a GGUF dequantized, ``gguf_folder.py``)."""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Tuple

import torch
from safetensors.torch import save_file

SHARD_BYTES = 128 * 2 ** 20
INDEX = "model.safetensors.index.json"


def write_shards(tensors: Iterable[Tuple[str, torch.Tensor]], folder: str, shard_bytes: int = SHARD_BYTES) -> None:
    """Each ``(name, tensor)`` into ``folder``'s ``model-0000k.safetensors`` files of about ``shard_bytes`` (a
    shard is written once it reaches them), and the index ``from_pretrained`` reads."""
    os.makedirs(folder, exist_ok=True)
    weight_map: Dict[str, str] = {}
    shard: Dict[str, torch.Tensor] = {}
    held = total = 0

    def flush() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        shard.clear()

    for name, tensor in tensors:
        shard[name] = tensor
        size = tensor.numel() * tensor.element_size()
        held, total = held + size, total + size
        if held >= shard_bytes:
            flush()
            held = 0
    if shard:
        flush()
    with open(os.path.join(folder, INDEX), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1, sort_keys=True)

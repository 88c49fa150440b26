"""A safetensors model folder written again in another dtype, one tensor in memory at a time.

``from_pretrained`` of a folder stored in float32, asked for bfloat16, keeps every float32 page of the file
mapped while it casts, a peak of several times the loaded weights (``benchmarks/load_memory.py``). Cast
here first, each tensor read through a mapping of its own that is released at once and written out in shards
of at most ``SHARD_BYTES``, the process holds the loaded weights and little more.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open

from recbole_lrgd.llm.shards import INDEX, SHARD_BYTES, write_shards

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def weight_files(folder: str) -> List[str]:
    """The safetensors files ``from_pretrained`` reads: those its index names, else ``model.safetensors``."""
    index = os.path.join(folder, INDEX)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return [os.path.join(folder, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    single = os.path.join(folder, "model.safetensors")
    return [single] if os.path.isfile(single) else []


def _quantized(folder: str) -> bool:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return "quantization_config" in json.load(f)
    except (OSError, ValueError):
        return True  # unreadable: leave it to from_pretrained


def stored_dtype(folder: str) -> Optional[torch.dtype]:
    """The dtype of the folder's first floating-point tensor (float16, bfloat16, float32, float64); None for a
    folder without the safetensors ``from_pretrained`` reads, or a quantized one (cast by its own rules)."""
    if _quantized(folder):
        return None
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                dtype = _DTYPES.get(f.get_slice(name).get_dtype())
                if dtype is not None:
                    return dtype
    return None


def _read(path: str, name: str, dtype: torch.dtype) -> torch.Tensor:
    """One tensor, floating-point ones cast to ``dtype``, owning its memory (the file's mapping is let go)."""
    with safe_open(path, framework="pt") as f:
        tensor = f.get_tensor(name)
    castable = tensor.dtype in _DTYPES.values() and tensor.dtype != dtype  # float8 and integers stay as stored
    return tensor.to(dtype) if castable else tensor.clone()


def _cast_tensors(src: str, dtype: torch.dtype) -> Iterator[Tuple[str, torch.Tensor]]:
    for path in weight_files(src):
        with safe_open(path, framework="pt") as f:
            names = list(f.keys())
        for name in names:
            yield name, _read(path, name, dtype)


def cast_folder(src: str, dst: str, dtype: torch.dtype, shard_bytes: int = SHARD_BYTES) -> None:
    """Write ``src``'s weights cast to ``dtype`` into ``dst`` (sharded, with an index), and its other files
    (config with the new dtype, tokenizer, generation config) beside them."""
    write_shards(_cast_tensors(src, dtype), dst, shard_bytes)
    for path in glob.glob(os.path.join(src, "*")):  # config, tokenizer, generation config: not the weights
        if os.path.isfile(path) and not path.endswith(WEIGHT_SUFFIXES) and os.path.basename(path) != INDEX:
            shutil.copy(path, dst)
    config_path = os.path.join(dst, "config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        for key in ("torch_dtype", "dtype"):
            if key in config:
                config[key] = str(dtype).replace("torch.", "")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)

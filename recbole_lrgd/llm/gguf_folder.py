"""A GGUF file written as a safetensors folder one tensor at a time, for the converted-model cache.

transformers' GGUF load dequantizes every tensor into one state dict and builds the model beside it, so a
conversion holds the weights twice (``benchmarks/load_memory.py`` measures it). Here each tensor is dequantized,
processed and renamed exactly as transformers does it (its GGUF reader, its architecture's tensor processor and
its name map, read from a model built on the meta device), cast, and written out in shards
(``shards.write_shards``) before the next is read. The folder, with the config and tokenizer that the GGUF gives
transformers, then loads as any saved model does.
"""
from __future__ import annotations

import ctypes
import gc
import os
from typing import TYPE_CHECKING, Iterator, Tuple

import numpy as np
import torch

from recbole_lrgd.llm.shards import SHARD_BYTES, write_shards

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


DEQUANTIZE_BYTES = 64 * 2 ** 20  # float32 rows dequantized at once


def gguf_to_folder(gguf_path: str, folder: str, dtype: torch.dtype, tokenizer: PreTrainedTokenizerBase,
                   shard_bytes: int = SHARD_BYTES) -> None:
    """Write the GGUF at ``gguf_path`` into ``folder``: its weights in ``dtype``, its config and ``tokenizer``."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(os.path.dirname(gguf_path) or ".", gguf_file=os.path.basename(gguf_path))
    write_shards(_tensors(gguf_path, config, dtype), folder, shard_bytes)
    _release_freed_memory()
    config.dtype = dtype
    config.save_pretrained(folder)
    GenerationConfig.from_model_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _tensors(gguf_path: str, config, dtype: torch.dtype) -> Iterator[Tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every weight transformers would load from the GGUF, one dequantized at a time."""
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map,
                                                          load_gguf_checkpoint, read_field)

    parsed = load_gguf_checkpoint(gguf_path, return_tensors=False)  # the fields a processor reads, no tensors
    parsed["tensors"] = {}
    reader = GGUFReader(gguf_path)
    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed.get("config", {}))
    with torch.device("meta"):
        names = get_gguf_hf_weights_map(AutoModelForCausalLM.from_config(config), processor)
    for tensor in reader.tensors:
        result = processor.process(weights=_dequantize(dequantize, tensor.data, tensor.tensor_type), name=tensor.name,
                                   tensor_key_mapping=names, parsed_parameters=parsed)
        if result.name in names:  # a float tensor is a view of the mapped file: copied; a dequantized one is ours
            weights = np.ascontiguousarray(result.weights) if result.weights.flags.writeable else np.copy(result.weights)
            yield names[result.name], torch.from_numpy(weights).to(dtype)
    if parsed["tensors"]:  # a processor that sets weights aside: none of the architectures this plugin reads
        raise NotImplementedError(f"the {architecture} GGUF processor keeps tensors of its own")


def _dequantize(dequantize, data: np.ndarray, kind) -> np.ndarray:
    """``dequantize(data, kind)`` a block of rows at a time into one array: the same values (quantization blocks
    lie within a row), without the whole tensor's temporaries of the vectorised dequantization at once."""
    if data.ndim < 2 or data.shape[0] < 2:
        return dequantize(data, kind)
    first = dequantize(data[:1], kind)
    rows = max(1, DEQUANTIZE_BYTES // max(1, first.nbytes))
    if rows >= data.shape[0]:
        return dequantize(data, kind)
    out = np.empty((data.shape[0],) + first.shape[1:], dtype=first.dtype)
    for start in range(0, data.shape[0], rows):
        out[start: start + rows] = dequantize(data[start: start + rows], kind)
    return out


def _release_freed_memory() -> None:
    """Give the memory the conversion freed back to the system before the folder loads: the reader's mapping of the
    GGUF (collected), and what glibc's allocator keeps of freed arrays (``malloc_trim``; nothing elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

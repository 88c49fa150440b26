"""LRGD with the real default LLM (SmolLM2-135M-Instruct) on a small ml-100k slice."""
import pytest

from recbole_lrgd.quick_start import run

pytestmark = pytest.mark.default_llm


def test_default_llm_on_ml100k_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {"eval_users": 4, "num_demos": 1, "max_his_len": 5, "show_progress": False, "use_gpu": False,
           "state": "WARNING"}
    first = run("LRGD", "ml-100k", config_dict=cfg, saved=False)
    second = run("LRGD", "ml-100k", config_dict=cfg, saved=False)
    assert first["test_users"] == 4
    assert first["test_result"] == second["test_result"]
    assert first["model_obj"].global_demo_users == second["model_obj"].global_demo_users
    assert 0.0 <= first["test_result"]["ndcg@10"] <= 1.0

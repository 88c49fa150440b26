"""The full-ranking benchmark (``--protocol=full``): re-ranking variant names, the retriever-alone row
``X>alone``, the "in top-N" share, the same users for every row, and resuming."""
import csv
import glob
import json
import os

import numpy as np
import pytest
import torch

import recbole_lrgd.quick_start as quick_start
from recbole_lrgd.benchmark.report import CSV_TAIL, bootstrap_pairs
from recbole_lrgd.benchmark.run import main, run_benchmark
from recbole_lrgd.benchmark.variants import resolve_variant
from recbole_lrgd.config import build_config
from recbole_lrgd.errors import LRGDError
from conftest import run_live
from test_rerank import FULL, _histories

MODELS = ["Pop", "BPR", "BPR>alone", "BPR>LRGD-zero-shot", "BPR>LRGD-zero-shot@0.5"]
RERANKED = ["BPR>alone", "BPR>LRGD-zero-shot", "BPR>LRGD-zero-shot@0.5"]
TOP_N = 8  # of 40 items: some held-out targets fall inside the top N, some outside


def _cfg(data_path, llm_dir):
    return {"data_path": data_path, "eval_users": None, "show_progress": False, "use_gpu": False,
            "eval_batch_size": 100, "epochs": 1, "train_batch_size": 64, "state": "WARNING", "score_cache": False,
            "llm_path": llm_dir, "rerank_top": TOP_N}


def test_rerank_variant_names_parse_into_lrgd_keys():
    assert resolve_variant("BPR>LRGD-zero-shot") == ("LRGD", {"candidate_source": "BPR", "demo_mode": "none"})
    assert resolve_variant("SASRec>LRGD-nearest@0.5") == (
        "LRGD", {"candidate_source": "SASRec", "demo_mode": "nearest", "rerank_blend": 0.5})
    assert resolve_variant("SASRec>LRGD-lrgd") == ("LRGD", {"candidate_source": "SASRec", "demo_mode": "lrgd"})
    assert resolve_variant("Pop>LRGD-stage1+2@1") == (
        "LRGD", {"candidate_source": "Pop", "demo_mode": "lrgd", "lrgd_stages": 2, "rerank_blend": 1.0})
    assert resolve_variant("GRU4Rec>alone") == (
        "LRGD", {"candidate_source": "GRU4Rec", "demo_mode": "none", "rerank_blend": 1.0})
    assert resolve_variant("LRGD-random") == ("LRGD", {"demo_mode": "random"})  # the listed names keep working
    assert resolve_variant("Pop") == ("Pop", {})
    assert bootstrap_pairs("full", ["Pop", "BPR>alone", "BPR>LRGD-zero-shot", "SASRec>LRGD-nearest@0.5"]) == [
        ("BPR>LRGD-zero-shot", "BPR>alone"), ("SASRec>LRGD-nearest@0.5", "SASRec>alone")]


@pytest.mark.parametrize("name, message", [
    ("Foo>LRGD-zero-shot", "unknown benchmark variant 'Foo>LRGD-zero-shot': 'Foo' is not a RecBole model name"),
    ("LRGD>LRGD-zero-shot", "'LRGD' is not a RecBole model name"),
    ("bpr>alone", "'bpr' is not a RecBole model name"),
    ("BPR>LRGD-bogus", "'LRGD-bogus' is neither alone nor LRGD-<mode> with <mode> one of zero-shot, random, "
                       "nearest, stage1, stage1+2, lrgd"),
    ("BPR>LRGD-zero-shot@1.5", "the blend after @ must be a number >= 0 and <= 1, not '1.5'"),
    ("BPR>LRGD-zero-shot@half", "the blend after @ must be a number >= 0 and <= 1, not 'half'"),
    ("BPR>LRGD-zero-shot@nan", "not 'nan'"),
    ("BPR>alone@0.5", "alone is the retriever's own order (blend 1), it takes no @"),
    ("Nope", "unknown benchmark variant 'Nope': use one of LRGD-zero-shot"),
])
def test_a_bad_variant_name_is_a_one_line_error(name, message):
    with pytest.raises(LRGDError) as info:
        resolve_variant(name)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args, message", [
    (["--models=BPR>LRGD-zero-shot"], "'BPR>LRGD-zero-shot' re-ranks a full ranking: run it with --protocol=full"),
    (["--protocol=full", "--models=Pop,LRGD-zero-shot"],
     "'LRGD-zero-shot' ranks sampled candidates: with --protocol=full give LRGD a retriever to re-rank, "
     "e.g. BPR>LRGD-zero-shot"),
    (["--protocol=full", "--models=Pop", "--topk=[5,10]"], "--protocol=full sets topk for every row: leave --topk out"),
    (["--protocol=full", "--models=Foo>alone"], "'Foo' is not a RecBole model name"),
])
def test_a_variant_the_protocol_cannot_run_fails_before_anything_runs(tmp_path, monkeypatch, capsys, args, message):
    def no_run(*args, **kwargs):
        raise AssertionError("a model ran")

    monkeypatch.setattr(quick_start, "run", no_run)
    out = str(tmp_path / "out")
    assert main(["--dataset=tiny", f"--out={out}", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(out)


def _hand_count_in_top_n(data_path, cfg, users, id_tokens):
    """The share of ``users`` (internal ids, raw tokens in ``id_tokens``) whose last item (the held-out
    target) is among the top ``TOP_N`` of the BPR checkpoint the run cached, with the user's other items
    removed by hand from the raw file: user and item embeddings multiplied here."""
    from recbole.data import create_dataset

    (path,) = glob.glob(os.path.join(data_path, "saved", "trained-BPR-tiny-*.pth"))
    weights = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    dataset = create_dataset(build_config("BPR", "tiny", config_dict={**cfg, "eval_args": FULL}))
    user_ids, item_ids = dataset.field2token_id[dataset.uid_field], dataset.field2token_id[dataset.iid_field]
    histories = _histories(data_path)
    inside = []
    for user in users:
        raw = id_tokens[user]
        scores = weights["item_embedding.weight"] @ weights["user_embedding.weight"][user_ids[raw]]
        scores[[0] + [item_ids[i] for i in histories[raw][:-1]]] = -np.inf
        inside.append(item_ids[histories[raw][-1]] in torch.topk(scores, TOP_N).indices.tolist())
    return float(np.mean(inside))


def test_full_protocol_benchmark(tiny_data, tiny_llm_dir, tmp_path, monkeypatch):
    """Every row ranks the whole catalogue for the same 12 users; ``BPR>alone`` is LRGD at rerank_blend 1
    (and, BPR being a general model, RecBole's own BPR row); the re-ranked rows' in-top-N share is the hand
    count over the cached retriever; a second run reuses every row."""
    cfg, out = _cfg(tiny_data, tiny_llm_dir), str(tmp_path / "out")
    calls, real = [], quick_start.run

    def counting(model, *args, **kwargs):
        calls.append((model, kwargs["config_dict"].get("candidate_source")))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(quick_start, "run", counting)
    first = run_benchmark("tiny", MODELS, cfg, out_dir=out, progress=False, protocol="full")
    assert first["ran"] == MODELS and not first["failed"] and len(calls) == len(MODELS)
    rows = {r["variant"]: r for r in first["rows"]}

    users = set(rows["Pop"]["per_user_ndcg10"])
    assert len(users) == 30 and all(r["test_users"] == 30 and set(r["per_user_ndcg10"]) == users for r in rows.values())
    assert all(r[k] is not None for r in rows.values() for k in ("recall@10", "ndcg@10", "mrr@10"))
    assert all("hit@10" not in r and "effectd" not in r for r in rows.values())

    built, alone = run_live("LRGD", "tiny", config_dict={**cfg, "eval_args": FULL, "metrics": ["Recall", "NDCG", "MRR"],
                                                         "topk": [10], "candidate_source": "BPR", "demo_mode": "none",
                                                         "rerank_blend": 1.0}, saved=False)
    metrics = ("recall@10", "ndcg@10", "mrr@10")
    assert {k: rows["BPR>alone"][k] for k in metrics} == {k: alone.test_result[k] for k in metrics}
    assert {k: rows["BPR>alone"][k] for k in metrics} == {k: rows["BPR"][k] for k in metrics}
    assert rows["BPR>alone"]["per_user_ndcg10"] == rows["BPR"]["per_user_ndcg10"]

    dataset = built.test_data._dataset
    share = _hand_count_in_top_n(tiny_data, cfg, sorted(map(int, users)), dataset.field2id_token[dataset.uid_field])
    assert 0 < share < 1  # both kinds of user
    assert alone.target_in_top_n == share
    assert [rows[v]["target_in_top_n"] for v in RERANKED] == [share] * 3  # one retriever, one top-N
    assert rows["Pop"]["target_in_top_n"] is None and rows["BPR"]["target_in_top_n"] is None

    paths = first["paths"]
    assert paths["md"] == os.path.join(out, "compare_tiny_full.md")
    md = open(paths["md"]).read()
    assert "| Model | Recall@10 | NDCG@10 | MRR@10 | in top-N | retriever s | fit s | eval s | users |" in md
    assert "30 test users, the same users for every row" in md
    assert f"| BPR>alone | {rows['BPR>alone']['recall@10']:.4f} |" in md and f"| {share:.4f} |" in md
    assert "BPR>LRGD-zero-shot vs BPR>alone: NDCG@10 difference" in md
    assert "BPR>LRGD-zero-shot@0.5 vs BPR>alone: NDCG@10 difference" in md
    with open(paths["csv"]) as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert reader.fieldnames == ["variant", "model", "recall@10", "ndcg@10", "mrr@10", "target_in_top_n",
                                 "retriever_time_s"] + CSV_TAIL
    assert [r["variant"] for r in table] == MODELS
    assert [r["target_in_top_n"] for r in table] == ["", ""] + [str(share)] * 3
    assert [r["retriever_time_s"] == "" for r in table] == [True, True, False, False, False]
    assert all(float(r["retriever_time_s"]) == rows[r["variant"]]["retriever_time_s"] >= 0 for r in table[2:])
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    calls.clear()
    second = run_benchmark("tiny", MODELS, cfg, out_dir=out, progress=False, protocol="full")
    assert calls == [] and second["reused"] == MODELS and second["rows"] == first["rows"]
    with open(paths["json"]) as f:
        assert sorted(r["variant"] for r in json.load(f)["rows"]) == sorted(MODELS)


def test_a_reranked_rows_retriever_validates_on_the_baselines_valid_users():
    from recbole_lrgd.benchmark.variants import variant_config

    assert variant_config("BPR", {"valid_users": 7}, [])[1]["valid_users"] == 7
    model, cfg = variant_config("BPR>LRGD-zero-shot", {"valid_users": 7}, [])
    assert model == "LRGD" and cfg["valid_users"] is None and cfg["retriever_valid_users"] == 7
    assert "retriever_valid_users" not in variant_config("LRGD-zero-shot", {"valid_users": 7}, [])[1]

"""RESULTS.md's "Where the LLM helps" from hand-made benchmark stores: the rows it has are tabled and judged, the
rows it lacks are named, and the recommendation rules count only datasets whose rows they need are stored."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import where_llm_helps as w  # noqa: E402
from recbole_lrgd.benchmark.store import save_slices  # noqa: E402
from recbole_lrgd.evaluator.slices import Slices  # noqa: E402

USERS = list(range(1, 41))
SLICES = Slices({"history": ("3-4", "5+"), "popularity": ("cold (<=5)", "head (>=9)")},
                {"history": {u: "3-4" if u <= 20 else "5+" for u in USERS},
                 "popularity": {u: "cold (<=5)" if u % 2 else "head (>=9)" for u in USERS}})


def _row(variant: str, values, weight=None) -> dict:
    row = {"variant": variant, "ndcg@10": sum(values) / len(values), "test_users": len(values),
           "per_user_ndcg10": {str(u): v for u, v in zip(USERS, values)}}
    return {**row, "prior_weight": weight} if weight is not None else row


def test_the_section_tables_judges_and_names_what_is_missing(tmp_path):
    rows = [_row("Pop", [0.2] * 40), _row("BPR", [0.5] * 40), _row("LRGD-nearest", [0.4] * 40),
            _row("Pop+LRGD-nearest", [0.6 if u % 2 else 0.3 for u in USERS], 0.3),
            _row("BPR+LRGD-nearest", [0.6] * 40, 0.7), _row("SASRec", [0.8] * 40),
            _row("SASRec+LRGD-nearest", [0.8] * 40, 1)]
    folder = tmp_path / "slices"
    folder.mkdir()
    (folder / "compare_amazon-beauty.json").write_text(json.dumps({"rows": rows}))
    save_slices(str(folder / "compare_amazon-beauty.slices.json"), SLICES)
    (tmp_path / "results").mkdir()
    page = "\n".join(w.section(str(folder), str(tmp_path)))
    assert "### amazon-beauty (40 test users)" in page
    assert "| BPR+LRGD-nearest | 0.6000 / 1.000 | 0.6000 / 1.000 |" in page  # history slices, 20 users each
    assert "| amazon-beauty | BPR | 0.7 | 0.6000 | +0.1000 [+0.1000, +0.1000] | +0.2000 [+0.2000, +0.2000] | 40 |" in page
    assert "amazon-toys-games (Pop, BPR, SASRec," in page  # a dataset with nothing stored is named
    assert "BPR+LRGD-nearest on history 3-4 +0.1000 [+0.1000, +0.1000] (20 users)" in page
    # a fused row's win over BPR is the LLM's only where it beats its own prior too: Pop+LLM's on cold items,
    # not SASRec+LLM's at weight 1 (SASRec's alone)
    assert "Pop+LRGD-nearest on popularity cold (<=5) +0.1000 [+0.1000, +0.1000] (20 users)" in page
    assert "SASRec+LRGD-nearest on" not in page and "SASRec+LLM − SASRec +0.0000" in page
    assert "Not stored yet: LRGD-zero-shot." in page
    assert "BPR+LLM beats BPR alone with an interval above 0 on 1 of the 1 Amazon datasets" in page
    assert "SASRec+LLM beats SASRec alone with an interval above 0 on 0 of the 1 Amazon datasets" in page
    assert os.path.isfile(tmp_path / "results" / "where_llm_helps.png")


def test_nothing_stored_is_said_and_nothing_is_drawn(tmp_path):
    page = w.section(str(tmp_path), str(tmp_path))
    assert any(line.startswith("Not stored yet") for line in page) and not os.path.exists(tmp_path / "results")

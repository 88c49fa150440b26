"""The side-by-side benchmark: one row per variant, same candidates, md/csv/png, and resumable."""
import csv
import json
import os
import subprocess
import sys

import pytest

import recbole_lrgd.quick_start as quick_start
from recbole_lrgd.benchmark.run import main, run_benchmark
from recbole_lrgd.benchmark.store import config_hash
from recbole_lrgd.benchmark.variants import VARIANTS
from recbole_lrgd.data.candidates import candidates_digest
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.results import RunResult


def _cfg(data_path, llm_dir):
    return {"data_path": data_path, "eval_users": 12, "show_progress": False, "use_gpu": False,
            "eval_batch_size": 100, "epochs": 1, "train_batch_size": 64, "state": "WARNING", "num_demos": 2,
            "score_cache": False, "llm_path": llm_dir}


def _counting_run(monkeypatch, interrupt_on=None):
    """Wrap quick_start.run: record the models it really runs; raise KeyboardInterrupt on one."""
    calls, real = [], quick_start.run

    def run(model, *args, **kwargs):
        calls.append((model, kwargs["config_dict"].get("demo_mode")))
        if model == interrupt_on:
            raise KeyboardInterrupt
        return real(model, *args, **kwargs)

    monkeypatch.setattr(quick_start, "run", run)
    return calls


def test_registry_has_the_issue_models():
    assert list(VARIANTS) == ["LRGD-zero-shot", "LRGD-random", "LRGD-nearest", "LRGD-stage1", "LRGD-stage1+2",
                              "Pop", "BPR", "SASRec", "GRU4Rec", "BERT4Rec"]
    assert VARIANTS["LRGD-stage1+2"] == ("LRGD", {"demo_mode": "lrgd", "lrgd_stages": 2})
    # the setup RESULTS.md recommends without a trained model runs by default, as a fusion row
    from recbole_lrgd.benchmark.variants import PROTOCOLS, resolve_variant

    assert PROTOCOLS["sampled"].models == [*VARIANTS, "Pop+LRGD-nearest"]
    model, keys = resolve_variant("Pop+LRGD-nearest")
    assert model == "LRGD" and keys["prior_model"] == "Pop" and keys["prior_weight"] == "auto"


def test_benchmark_resumes_and_writes_md_csv_png(tiny_data, tiny_llm_dir, tmp_path, monkeypatch):
    cfg, out = _cfg(tiny_data, tiny_llm_dir), str(tmp_path / "out")
    # interrupted after the first model: its row is kept
    calls = _counting_run(monkeypatch, interrupt_on="LRGD")
    with pytest.raises(KeyboardInterrupt):
        run_benchmark("tiny", ["Pop", "LRGD-zero-shot"], cfg, out_dir=out, progress=False)
    with open(os.path.join(out, "compare_tiny.json")) as f:
        assert [r["variant"] for r in json.load(f)["rows"]] == ["Pop"]
    monkeypatch.undo()

    # run again: Pop is reused, the zero-shot row computed
    calls = _counting_run(monkeypatch)
    first = run_benchmark("tiny", ["Pop", "LRGD-zero-shot"], cfg, out_dir=out, progress=False)
    assert calls == [("LRGD", "none")]
    assert first["reused"] == ["Pop"] and first["ran"] == ["LRGD-zero-shot"] and not first["failed"]

    # one more variant: the first two rows are reused as they were, only the new one runs
    calls.clear()
    second = run_benchmark("tiny", ["Pop", "LRGD-zero-shot", "LRGD-random"], cfg, out_dir=out, progress=False)
    assert calls == [("LRGD", "random")]
    assert second["reused"] == ["Pop", "LRGD-zero-shot"] and second["ran"] == ["LRGD-random"]
    assert second["rows"][:2] == first["rows"]  # same numbers and the same recorded fit/eval times

    rows = second["rows"]
    assert [r["variant"] for r in rows] == ["Pop", "LRGD-zero-shot", "LRGD-random"]
    assert len({r["candidates"] for r in rows}) == 1  # every model ranked the same candidate sets
    assert all(r["test_users"] == 12 and 0.0 <= r["ndcg@10"] <= 1.0 for r in rows)
    assert rows[0]["effectd"] is None and rows[2]["effectd"] is not None  # EffectD where it applies

    paths = second["paths"]
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == ["Pop", "LRGD-zero-shot", "LRGD-random"]
    assert {"hit@1", "hit@5", "hit@10", "ndcg@5", "ndcg@10", "mrr@10", "effectd", "fit_time_s",
            "eval_time_s"} <= set(table[0])
    md = open(paths["md"]).read()
    assert "| Model | Hit@1 | Hit@5 | Hit@10 | NDCG@5 | NDCG@10 | MRR@10 | EffectD |" in md
    assert "same candidate sets for every model" in md and "| LRGD-random |" in md
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_a_changed_config_is_a_new_row_and_cosmetic_keys_are_not():
    base = {"eval_users": 12, "demo_mode": "none"}
    h = config_hash("tiny", "LRGD", base, [])
    assert config_hash("tiny", "LRGD", {**base, "show_progress": True, "state": "INFO"}, []) == h
    assert config_hash("tiny", "LRGD", {**base, "eval_users": 13}, []) != h
    assert config_hash("tiny", "Pop", base, []) != h


def _fake_run(model, dataset, config_file_list=None, config_dict=None, saved=True):
    if config_dict.get("demo_mode") == "lrgd":
        raise LRGDError("demo_mode 'lrgd' is not there yet")

    class Data:
        def candidate_sets(self):
            return {1: [1, 2, 3]}

    return RunResult(model=model, dataset=dataset,
                     test_result={"hit@1": 0.5, "hit@5": 0.75, "hit@10": 1.0, "ndcg@5": 0.6, "ndcg@10": 0.6,
                                  "mrr@10": 0.55},
                     best_valid_score=None, valid_score_bigger=True, best_valid_result=None,
                     fit_time=1.0, eval_time=2.0, test_users=4, candidates=candidates_digest(Data()))


def test_a_failing_variant_is_reported_not_stored_and_the_rest_run(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quick_start, "run", _fake_run)
    out = str(tmp_path / "out")
    code = main(["--dataset=tiny", "--models=Pop,LRGD-stage1,BPR", f"--out={out}", "--no_plot",
                 "--eval_users=4", f"--data_path={tiny_data}"])
    captured = capsys.readouterr()
    assert code == 1
    assert "| Pop |" in captured.out and "| BPR |" in captured.out  # the table is printed
    assert "LRGD-stage1: failed: demo_mode 'lrgd' is not there yet" in captured.err
    with open(os.path.join(out, "compare_tiny.json")) as f:
        assert [r["variant"] for r in json.load(f)["rows"]] == ["Pop", "BPR"]
    assert "LRGD-stage1: failed" in open(os.path.join(out, "compare_tiny.md")).read()


def test_cli_entry_points(tiny_data, tmp_path, monkeypatch, capsys):
    import run_recbole_lrgd

    monkeypatch.setattr(quick_start, "run", _fake_run)
    out = str(tmp_path / "out")
    assert run_recbole_lrgd.main(["--benchmark", "--dataset=tiny", "--models=Pop", f"--out={out}",
                                  f"--data_path={tiny_data}"]) == 0
    assert "| Pop | 0.5000 |" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out, "compare_tiny.png"))
    assert main(["--dataset=tiny", "--models=Nope", f"--out={out}"]) == 2
    assert "unknown benchmark variant 'Nope'" in capsys.readouterr().err


@pytest.mark.parametrize("models,line", [
    ("Foo+LRGD-nearest", "error: unknown benchmark variant 'Foo+LRGD-nearest': 'Foo' is not a RecBole model name"),
    ("", "error: --models names no variant"),
])
def test_a_bad_models_flag_is_one_line_in_a_fresh_process(tmp_path, models, line):
    """Checked before any config is built (RecBole's exlib package, which needs lightgbm, not yet made importable),
    and an empty --models is not the default list."""
    done = subprocess.run([sys.executable, "-m", "recbole_lrgd.benchmark", "--dataset=tiny", f"--models={models}",
                           f"--out={tmp_path}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(line)


@pytest.mark.parametrize("flags,line", [
    (["--config_files=missing.yaml"], "error: config file 'missing.yaml' does not exist"),
    (["--dataset=nonexistent"], "error: unknown dataset 'nonexistent': no "),
    (["--name=a/b"], "error: --name 'a/b' must be a file stem, with no folder (--out names the folder)"),
    (["--out=FILE/out"], "error: --out 'FILE/out' cannot be a folder: FILE is a file"),
])
def test_bad_shared_input_is_one_line_before_any_row_runs_or_file_is_written(tiny_data, tmp_path, monkeypatch, capsys,
                                                                              flags, line):
    def no_run(*args, **kwargs):
        raise AssertionError("a row ran despite bad input")

    monkeypatch.setattr(quick_start, "run", no_run)
    work = tmp_path / "work"
    work.mkdir()
    (work / "FILE").write_text("")
    monkeypatch.chdir(work)
    assert main(["--dataset=tiny", "--models=Pop,BPR", "--out=out", f"--data_path={tiny_data}", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].replace(str(work) + "/", "").startswith(line), err
    assert sorted(os.listdir(work)) == ["FILE"]


@pytest.mark.parametrize("text", ["1e-3", "None", "~", "True", "true", "[1, 10]", "{'a': 1}", "0x10", ".5", "abc",
                                  "auto", "uni19", "-2"])
def test_a_benchmark_key_reads_as_a_runs_command_line_gives_it_to_recbole(text):
    from recbole.config import Config

    from recbole_lrgd.benchmark.run import parse_value

    recbole = Config._convert_config_dict(None, {"key": text})["key"]  # RecBole's reading of --key=<text>
    assert parse_value(text) == (None if text == "~" else recbole)  # the plugin reads the word ~ as None


def test_without_matplotlib_the_tables_are_written_and_the_png_skipped_with_one_warning(tiny_data, tmp_path,
                                                                                        monkeypatch, capsys):
    monkeypatch.setattr(quick_start, "run", _fake_run)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = str(tmp_path / "out")
    assert main(["--dataset=tiny", "--models=Pop", f"--out={out}", f"--data_path={tiny_data}"]) == 0
    captured = capsys.readouterr()
    assert "| Pop | 0.5000 |" in captured.out
    assert sorted(os.listdir(out)) == ["compare_tiny.csv", "compare_tiny.json", "compare_tiny.md"]
    png = os.path.join(out, "compare_tiny.png")
    warnings = [line for line in captured.err.splitlines() if "warning" in line.lower() or "Traceback" in line]
    assert warnings == [f"warning: no {png}: the bar chart needs matplotlib (pip install matplotlib, or the "
                        "plugin's [bench] extra)"]


def test_rows_keep_recboles_per_user_ndcg_without_scoring_twice(tiny_data, tiny_llm_dir, tmp_path, monkeypatch):
    """The paired bootstrap's per-user NDCG@10 comes from the evaluation itself: each test user is
    scored once, and the users' mean is the row's NDCG@10."""
    import numpy as np

    from recbole_lrgd.model.lrgd import LRGD

    scored, score_users = [], LRGD.score_users

    def counting(self, interaction, *args, **kwargs):
        scored.extend(dict.fromkeys(interaction[self.USER_ID].tolist()))
        return score_users(self, interaction, *args, **kwargs)

    monkeypatch.setattr(LRGD, "score_users", counting)
    result = run_benchmark("tiny", ["LRGD-zero-shot", "Pop"], _cfg(tiny_data, tiny_llm_dir),
                           out_dir=str(tmp_path / "out"), plot=False, progress=False)
    for row in result["rows"]:
        per_user = row["per_user_ndcg10"]
        assert len(per_user) == row["test_users"] == 12
        assert round(float(np.mean(list(per_user.values()))), 4) == row["ndcg@10"]
    assert not result["failed"] and sorted(r["variant"] for r in result["rows"]) == ["LRGD-zero-shot", "Pop"]
    assert len(scored) == 12  # no second pass over the test users for the bootstrap

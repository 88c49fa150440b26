"""The command line: RecBole keys are ``--key=value`` words, each once; ``--help`` lists every plugin key."""
import os
import re
import sys

import pytest

from recbole_lrgd import cli
from recbole_lrgd.keys import plugin_keys, reference_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_run(monkeypatch):
    """``quick_start.run`` records the command line RecBole would read, and runs nothing."""
    import recbole_lrgd.quick_start as quick_start

    seen = []

    def fake_run(**kwargs):
        seen.append(list(sys.argv[1:]))
        return None

    monkeypatch.setattr(quick_start, "run", fake_run)
    return seen


@pytest.mark.parametrize("argv,line", [
    (["--demo_mode", "random"], "error: --demo_mode has no value: write --demo_mode=random"),
    (["--use_gpu"], "error: --use_gpu has no value: write --use_gpu=<value>"),
    (["--eval_users=5", "random"], "error: 'random' is not a --key=value argument"),
    (["--prompt_instruction=a=b"], "error: --prompt_instruction=a=b has more than one '='"),
])
def test_a_word_that_is_not_key_value_is_one_line_naming_the_flag(no_run, capsys, argv, line):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    assert no_run == []  # nothing ran


def test_a_bare_word_error_is_exactly_one_line(no_run, capsys):
    assert cli.main(["--model=Pop", "--demo_mode", "random"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: --demo_mode has no value: write --demo_mode=random (RecBole keys are --key=value, "
                   "one word)"]
    assert no_run == []


def test_a_key_given_twice_keeps_its_last_value_with_a_warning(no_run, capsys):
    assert cli.main(["--eval_users=5", "--model=Pop", "--eval_users=4", "--seed=3", "--seed=3"]) == 0
    assert no_run == [["--eval_users=4", "--seed=3"]]
    assert capsys.readouterr().err.splitlines() == [
        "warning: --eval_users is given twice ('5', then '4'): the last one is used"]
    assert "--eval_users=5" not in sys.argv  # the process's own command line is back


@pytest.fixture
def no_benchmark(monkeypatch):
    """The benchmark records the config keys and the command line RecBole would read, and runs nothing."""
    import recbole_lrgd.benchmark.run as benchmark_run

    seen = []

    def fake_benchmark(dataset, models, config_dict, *args, **kwargs):
        seen.append((config_dict, list(sys.argv[1:])))
        return {"table": "", "bootstrap": [], "failed": {}, "paths": {}}

    monkeypatch.setattr(benchmark_run, "run_benchmark", fake_benchmark)
    return seen


def test_the_benchmark_reads_config_keys_as_a_run_does(no_benchmark, capsys):
    """The same one line for a word that is not --key=value, and nothing run; the values parsed as YAML, each key
    once; none left on the command line, where RecBole's Config would let them beat each variant's own keys."""
    assert cli.main(["--benchmark", "--models=Pop", "--demo_mode", "random"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --demo_mode has no value: write --demo_mode=random (RecBole keys are --key=value, one word)"]
    assert no_benchmark == []
    assert cli.main(["--benchmark", "--models=Pop", "--eval_users=5", "--eval_users=~", "--topk=[1, 10]"]) == 0
    assert no_benchmark == [({"eval_users": None, "topk": [1, 10]}, [])]
    assert "given twice" in capsys.readouterr().err


def test_help_lists_every_plugin_key_with_its_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for _, keys in plugin_keys():
        for k in keys:
            line = next((l for l in out.splitlines() if l.strip().startswith(f"--{k.key}={k.default}")), None)
            assert line is not None, k.key
            if k.meaning:
                assert line.rstrip().endswith(k.meaning), k.key
    assert "demo_negatives" in out and "Every other --key=value is a RecBole config key" in out


def test_the_key_reference_is_generated_from_the_yaml():
    """docs/keys.md is ``python -m recbole_lrgd.keys``'s output (regenerate it after editing a YAML)."""
    with open(os.path.join(ROOT, "docs", "keys.md"), encoding="utf-8") as f:
        assert f.read() == reference_markdown()


def test_a_yaml_comment_line_joins_its_key_and_a_heading_its_section(tmp_path):
    from recbole_lrgd.keys import read_keys

    path = tmp_path / "m.yaml"
    path.write_text("# Head one\n# and two\na: 1   # (int) first\n    #   more\nb:\n  x: 1\n# Next\nc: ~\n")
    got = [(k.key, k.default, k.meaning, k.section) for k in read_keys(str(path))]
    assert got == [("a", "1", "(int) first more", "Head one and two"), ("b", "{x: 1}", "", "Head one and two"),
                   ("c", "~", "", "Next")]


def test_the_benchmark_help_says_other_keys_pass_through(capsys):
    from recbole_lrgd.benchmark.run import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "Every other --key=value is a config key" in out and "passed through to each model" in out


def test_the_batch_size_key_says_that_it_moves_bf16_scores_and_where_the_measurement_is():
    from recbole_lrgd.keys import plugin_keys

    meaning = {k.key: k.meaning for _, keys in plugin_keys() for k in keys}["user_batch_size"]
    assert "bfloat16" in meaning and "docs/performance.md" in meaning
    with open(os.path.join(ROOT, "docs", "performance.md"), encoding="utf-8") as f:
        assert "benchmarks/out/batch_quality.md" in f.read()
    assert os.path.isfile(os.path.join(ROOT, "benchmarks", "out", "batch_quality.md"))


def test_the_console_shows_the_data_the_llm_line_and_the_metrics_and_the_log_file_the_config(tiny_data,
                                                                                            tiny_llm_dir):
    """A run's console: RecBole's data summary, the LLM line, the metrics; no config dump and no pandas
    FutureWarning from RecBole's code. The log file keeps the config."""
    import glob
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_lrgd.py"), "--dataset=tiny",
                           f"--data_path={tiny_data}", f"--llm_path={tiny_llm_dir}", "--eval_users=4",
                           "--use_gpu=False", "--score_cache=False", "--show_progress=False"],
                          cwd=tiny_data, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "The number of users" in console and "LLM: " in console and "test result: hit@1" in console
    assert "demo_negatives" not in console and "FutureWarning" not in console
    logs = glob.glob(os.path.join(tiny_data, "log", "LRGD", "*.log"))
    assert len(logs) == 1
    with open(logs[0], encoding="utf-8") as f:
        assert "demo_negatives" in f.read()

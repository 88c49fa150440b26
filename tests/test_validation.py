"""Bad input is one ``LRGDError`` line raised before anything is written (log, tensorboard folder) or
loaded (the LLM); an unknown key is a warning with a "did you mean"; long titles are capped."""
import logging
import os
import sys
import time

import numpy as np
import pytest

from conftest import write_tiny_dataset

from recbole_lrgd.data.candidates import read_candidates_file
from recbole_lrgd.data.titles import cap_tokens
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.prompt import build_prompt, encode_prompt
from recbole_lrgd.llm.tiny import make_tokenizer
from recbole_lrgd.quick_start import build_config, run

TOK = make_tokenizer()


@pytest.fixture
def base(tiny_data, tiny_llm_dir, monkeypatch):
    """A valid tiny LRGD config; the command line holds no RecBole keys."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py"])
    return {"data_path": tiny_data, "llm_path": tiny_llm_dir, "use_gpu": False, "state": "WARNING",
            "show_progress": False, "score_cache": False, "eval_users": 5, "eval_batch_size": 100}


def _fails_first(monkeypatch, match, **kwargs):
    """``run`` raises a one-line LRGDError matching ``match`` with nothing written and no LLM loaded."""
    import recbole_lrgd.quick_start as quick_start

    def no_load(config):
        raise AssertionError("the LLM was loaded before the bad input was reported")

    monkeypatch.setattr(quick_start, "load_config_llm", no_load)
    with pytest.raises(LRGDError, match=match) as info:
        run(**kwargs)
    assert "\n" not in str(info.value)
    for written in ("log", "log_tensorboard", "saved"):
        assert not os.path.exists(written), f"{written}/ was written before the error"
    return str(info.value)


@pytest.mark.parametrize("keys,match", [
    ({"scorer_mode": "foo"}, "scorer_mode must be one of likelihood, verbalizer, generate, not 'foo'"),
    ({"demo_mode": "foo"}, "demo_mode must be one of none, random, nearest, lrgd"),
    ({"num_demos": -1}, "num_demos must be an integer >= 0, not -1"),
    ({"num_demos": "abc"}, "num_demos must be an integer >= 0, not 'abc'"),
    ({"eval_users": 0}, r"eval_users must be a positive integer or ~ \(all users\), not 0"),
    ({"eval_users": -5}, "eval_users must be a positive integer or ~ .*, not -5"),
    ({"valid_users": 0}, "valid_users must be a positive integer or ~ .*, not 0"),
    ({"candidate_batch_size": 0}, "candidate_batch_size must be a positive integer, not 0"),
    ({"user_batch_size": 0}, "user_batch_size must be a positive integer, not 0"),
    ({"max_title_tokens": 0}, "max_title_tokens must be a positive integer or ~"),
    ({"max_prompt_tokens": -1}, "max_prompt_tokens must be a positive integer or ~"),
    ({"title_match_threshold": 1.5}, r"title_match_threshold must be a number >= 0 and <= 1, not 1.5"),
    ({"lrgd_stages": 3}, "lrgd_stages must be 1 or 2, not 3"),
    ({"lrgd_scope": "foo"}, "lrgd_scope must be one of global, per_user, not 'foo'"),
    ({"pool_size": 0}, "pool_size must be a positive integer, not 0"),
    ({"probe_users": 0}, "probe_users must be a positive integer, not 0"),
    ({"perturb_num": -1}, "perturb_num must be an integer >= 0, not -1"),
    ({"perturb_rate": 1.5}, "perturb_rate must be a number >= 0 and <= 1, not 1.5"),
    ({"lambda_std": -1}, "lambda_std must be a number >= 0, not -1"),
    ({"demo_token_budget": 0}, "demo_token_budget must be a positive integer or ~ .*, not 0"),
    ({"stage2_patience": 0}, "stage2_patience must be a positive integer, not 0"),
    ({"effect_temperature": 0}, "effect_temperature must be a number > 0 or auto, not 0"),
    ({"warm_start": "yes"}, "warm_start must be True or False, not 'yes'"),
    ({"rerank_score_all": "all"}, "rerank_score_all must be True or False, not 'all'"),
    ({"lrgd_scope": "per_user", "num_demos": 2, "library_size": 1}, "library_size 1 is smaller than num_demos 2"),
])
def test_a_bad_value_is_one_line_before_anything_is_written(base, monkeypatch, keys, match):
    _fails_first(monkeypatch, match, model="LRGD", dataset="tiny", config_dict={**base, "demo_mode": "lrgd", **keys})


def test_a_candidates_file_that_is_a_folder_is_named(base, monkeypatch, tmp_path):
    _fails_first(monkeypatch, "candidates_file .* is a folder, not a file", model="LRGD", dataset="tiny",
                 config_dict={**base, "candidates_file": str(tmp_path)})


def test_tilde_on_the_command_line_means_none(base, monkeypatch):
    """RecBole reads ``--eval_users=~`` as the string '~'; the YAML's ~ is meant."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py", "--eval_users=~"])
    assert build_config("LRGD", "tiny", config_dict=base)["eval_users"] is None


def _unknown_key_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "unknown config key" in r.getMessage()]


def test_unknown_keys_warn_with_the_closest_known_key(base, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py", "--demo_mod=none", "--result_file=r.json"])
    path = tmp_path / "mine.yaml"
    path.write_text("num_demo: 3\nlearning_rate: 0.01\n")
    with caplog.at_level(logging.WARNING):
        config = build_config("LRGD", "tiny", [str(path)], config_dict={**base, "max_title_token": 8,
                                                                          "zzzz_qqqq": 1})
    assert _unknown_key_warnings(caplog) == [
        f"unknown config key 'num_demo' in {path} (did you mean 'num_demos'?)",
        "unknown config key 'max_title_token' in config_dict (did you mean 'max_title_tokens'?)",
        "unknown config key 'zzzz_qqqq' in config_dict (not a RecBole or recbole_lrgd key: it is ignored)",
        "unknown config key 'demo_mod' on the command line (did you mean 'demo_mode'?)",
    ]
    import yaml

    from recbole_lrgd.properties_files import properties_dir

    default = yaml.safe_load((properties_dir() / "model" / "LRGD.yaml").read_text())["demo_mode"]
    assert default != "none" and config["demo_mode"] == default  # the misspelt key changed nothing


@pytest.mark.parametrize("model", ["LRGD", "SASRec", "Pop"])
def test_the_default_configs_warn_about_no_key(monkeypatch, caplog, model):
    """RecBole's runtime keys, dataset keys and the plugin's dataset files are all known."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py"])
    with caplog.at_level(logging.WARNING):
        build_config(model, "ml-100k")
    assert _unknown_key_warnings(caplog) == []


def test_a_scalar_yaml_is_one_line_and_an_empty_one_is_no_keys(base, monkeypatch, tmp_path):
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    _fails_first(monkeypatch, f"config file '{scalar}' holds a str, not key: value lines", model="LRGD",
                 dataset="tiny", config_file_list=[str(scalar)], config_dict=base)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set yet\n")
    assert build_config("LRGD", "tiny", [str(empty)], config_dict=base)["eval_users"] == 5


def _rewrite_line(path, lineno, fn):
    with open(path) as f:
        lines = f.readlines()
    lines[lineno - 1] = fn(lines[lineno - 1])
    with open(path, "w") as f:
        f.writelines(lines)


def test_a_tab_inside_a_title_names_the_file_and_line(base, monkeypatch):
    item = os.path.join(base["data_path"], "tiny", "tiny.item")
    _rewrite_line(item, 5, lambda line: line.replace("The Item", "The\tItem"))
    _fails_first(monkeypatch, r"tiny\.item line 5: 3 tab-separated fields, the header has 2 \(a tab inside a value\?\)",
                 model="LRGD", dataset="tiny", config_dict=base)


def test_a_word_in_a_float_column_names_the_file_line_and_column(base, monkeypatch):
    inter = os.path.join(base["data_path"], "tiny", "tiny.inter")
    _rewrite_line(inter, 7, lambda line: "\t".join(line.split("\t")[:2] + ["yesterday\n"]))
    for model in ("LRGD", "SASRec"):
        _fails_first(monkeypatch, r"tiny\.inter line 7: timestamp:float value 'yesterday' is not a number",
                     model=model, dataset="tiny", config_dict=base)


def test_a_column_recbole_does_not_load_is_not_checked(base, monkeypatch):
    inter = os.path.join(base["data_path"], "tiny", "tiny.inter")
    _rewrite_line(inter, 7, lambda line: "\t".join(line.split("\t")[:2] + ["yesterday\n"]))
    config = build_config("LRGD", "tiny", config_dict={**base, "load_col": {"inter": ["user_id", "item_id"],
                                                                           "item": ["item_id", "title"]}})
    assert config["load_col"]["inter"] == ["user_id", "item_id"]


def test_bytes_that_are_not_utf8_name_their_line(base, monkeypatch):
    item = os.path.join(base["data_path"], "tiny", "tiny.item")
    with open(item, "ab") as f:
        f.write(b"i99\tCaf\xe9 latin-1\n")
    _fails_first(monkeypatch, r"tiny\.item line 42: not utf-8 text", model="LRGD", dataset="tiny", config_dict=base)


def test_a_candidates_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    users, items = {"[PAD]": 0, "a": 1, "b": 2}, {"[PAD]": 0, **{f"x{i}": i for i in range(1, 6)}}
    text = "a\tx1 x2 x3\nb\tx3 x4 x5\n"
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text(text, encoding="utf-8")
    bom.write_text(text, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    want = read_candidates_file(str(plain), users, items, {1: 5, 2: 1}, 3)
    got = read_candidates_file(str(bom), users, items, {1: 5, 2: 1}, 3)
    assert want.keys() == got.keys() and all(np.array_equal(want[u], got[u]) for u in want)


# -- the prompt budget and long titles -------------------------------------------------------------
CANDS = [f"Candidate number {i}" for i in range(20)]


@pytest.mark.parametrize("listed", [True, False])
def test_a_budget_below_the_shortest_prompt_names_the_minimum(listed):
    demos = []
    shortest = build_prompt(TOK, demos, ["Last item"], CANDS, seed=(0, 1),
                            mode="likelihood", demo_format="next_item", list_candidates=listed)
    need = len(encode_prompt(TOK, shortest))
    ok = build_prompt(TOK, demos, ["Old item", "Last item"], CANDS, seed=(0, 1),
                      mode="likelihood", demo_format="next_item", max_tokens=need,
                      list_candidates=listed)
    assert ok.text == shortest.text  # the oldest history item went to make room
    with pytest.raises(LRGDError, match=f"max_prompt_tokens {need - 1} is too small: .* alone take {need} tokens; "
                                        f"set max_prompt_tokens to at least {need}"):
        build_prompt(TOK, demos, ["Old item", "Last item"], CANDS, seed=(0, 1),
                     mode="likelihood", demo_format="next_item", max_tokens=need - 1,
                     list_candidates=listed)


def test_titles_are_cut_to_a_token_prefix_never_inside_a_character():
    capped = cap_tokens(["tiny", "a long title", "ééé au lait", "café au lait"], TOK, 4)  # one token a byte
    assert capped == ["tiny", "a lo", "éé", "café"]  # é is two bytes: cut after two, or kept whole with its first


def _long_title_dataset(root, words):
    """The tiny dataset's 40 items plus 10, every title ``words`` words long, with runs of spaces."""
    folder = write_tiny_dataset(root, n_items=50)
    with open(os.path.join(folder, "tiny.item"), "w") as f:
        f.write("item_id:token\ttitle:token\n")
        for i in range(50):
            f.write(f"i{i}\tItem  {i}:   " + " ".join(f"w{k % 97}" for k in range(words)) + "\n")


def test_4500_word_titles_are_capped_once_and_run_like_short_ones(base, tmp_path):
    timings = {}
    for words in (3, 4500):
        _long_title_dataset(str(tmp_path / f"w{words}"), words)
        start = time.time()
        result = run("LRGD", "tiny", config_dict={**base, "data_path": str(tmp_path / f"w{words}"),
                                                  "demo_mode": "random"}, saved=False)
        timings[words] = time.time() - start
        titles = result["model_obj"].titles
        assert titles[1].startswith("Item ") and "  " not in titles[1]  # whitespace runs are one space
        assert max(len(TOK(t, add_special_tokens=False).input_ids) for t in titles) <= 32
    assert timings[4500] < 3 * timings[3] + 5, timings

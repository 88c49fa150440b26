"""Bad input is one ``LRGDError`` line raised before anything is written (log, tensorboard folder) or
loaded (the LLM); an unknown key is a warning with a "did you mean"; long titles are capped."""
import importlib.util
import logging
import os
import sys

import numpy as np
import pytest

from conftest import run_live, write_tiny_dataset

from recbole_lrgd.config import build_config
from recbole_lrgd.data.candidates import read_candidates_file
from recbole_lrgd.data.titles import cap_tokens
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.prompt import build_prompt, encode_prompt
from recbole_lrgd.llm.tiny import make_tokenizer
from recbole_lrgd.model import LRGD
from recbole_lrgd.quick_start import run

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
    ({"user_batch_size": 0}, "user_batch_size must be a positive integer or auto, not 0"),
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


def test_4500_word_titles_are_capped_once_like_short_ones(base, tmp_path, monkeypatch):
    """Titles are cut to ``max_title_tokens`` once, when the model reads them: a 4500-word title costs the run no
    more tokenizer passes than a 3-word one, and every prompt sees at most 32 tokens of it."""
    from recbole_lrgd.data import titles as titles_module

    real, calls = titles_module.cap_tokens, {}
    for words in (3, 4500):
        _long_title_dataset(str(tmp_path / f"w{words}"), words)
        calls[words] = []
        monkeypatch.setattr(titles_module, "cap_tokens",
                            lambda *args, seen=calls[words]: seen.append(len(args[0])) or real(*args))
        built, result = run_live("LRGD", "tiny", config_dict={**base, "data_path": str(tmp_path / f"w{words}"),
                                                              "demo_mode": "random"}, saved=False)
        titles = built.model.titles
        assert titles[1].startswith("Item ") and "  " not in titles[1]  # whitespace runs are one space
        assert max(len(TOK(t, add_special_tokens=False).input_ids) for t in titles) <= 32
        assert result.test_users == 5
    assert calls[3] == calls[4500] and calls[3], calls  # the same passes, over all the titles at once


@pytest.mark.parametrize("keys,match", [
    ({"seed": "abc"}, "seed must be an integer >= 0, not 'abc'"),
    ({"metrics": ["Nope"]}, "metrics: there is no metric named 'Nope' \\(RecBole's: auc, .*ndcg"),
    ({"topk": [1.5]}, r"topk must be a positive integer or a list of them, not \[1.5\]"),
    ({"valid_metric": "Foo@3"}, r"valid_metric 'Foo@3' is not among the evaluated metrics .*: e.g. Hit@10, NDCG@10"),
    ({"valid_metric": "NDCG@7"}, "valid_metric 'NDCG@7' is not among the evaluated metrics"),
    ({"valid_metric": "NDCG"}, "valid_metric 'NDCG' is not among the evaluated metrics"),
    ({"eval_args": "uni19"}, "eval_args in config_dict must be a mapping of split, group_by, order, mode, not 'uni19'"),
    ({"fallback_zero_shot": 2}, "fallback_zero_shot must be True or False, not 2"),
    ({"score_cache_dir": ""}, "score_cache_dir must be a non-empty string, not ''"),
    ({"title_field": " "}, "title_field must be a non-empty string, not ' '"),
])
def test_recbole_keys_the_plugin_reads_are_one_line_before_anything_is_written(base, monkeypatch, keys, match):
    _fails_first(monkeypatch, match, model="LRGD", dataset="tiny", config_dict={**base, **keys})


@pytest.mark.parametrize("keys,match", [
    ({"learning_rate": "abc"}, "^learning_rate must be a number > 0, not 'abc'$"),
    ({"learning_rate": 0}, "^learning_rate must be a number > 0, not 0$"),
    ({"train_batch_size": 0}, "^train_batch_size must be a positive integer, not 0$"),
    ({"epochs": -1}, "^epochs must be an integer >= 0, not -1$"),
    ({"weight_decay": -0.1}, "^weight_decay must be a number >= 0, not -0.1$"),
    ({"stopping_step": "ten"}, "^stopping_step must be an integer >= 0, not 'ten'$"),
    ({"show_progress": "maybe"}, "^show_progress must be True or False, not 'maybe'$"),
    ({"reproducibility": "yes"}, "^reproducibility must be True or False, not 'yes'$"),
])
def test_a_baselines_training_key_of_the_wrong_type_is_one_line_not_a_traceback_in_training(base, monkeypatch, keys,
                                                                                            match):
    _fails_first(monkeypatch, match, model="BPR", dataset="tiny", config_dict={**base, **keys})


def test_a_checkpoint_dir_that_cannot_be_made_is_one_line(base, monkeypatch, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    _fails_first(monkeypatch, f"checkpoint_dir '{afile}/saved' cannot be a folder: {afile} is a file",
                 model="Pop", dataset="tiny", config_dict={**base, "checkpoint_dir": f"{afile}/saved"})
    _fails_first(monkeypatch, "checkpoint_dir '/proc/no/such' cannot be written: /proc does not take new files",
                 model="Pop", dataset="tiny", config_dict={**base, "checkpoint_dir": "/proc/no/such"})
    build_config("Pop", "tiny", config_dict={**base, "checkpoint_dir": str(tmp_path / "new" / "deep")})
    assert sorted(os.listdir(tmp_path)) == ["afile", "tiny"]  # the write check left nothing, created nothing


def test_a_valid_metric_of_the_evaluated_metrics_passes(base):
    config = build_config("LRGD", "tiny", config_dict={**base, "metrics": ["Hit", "NDCG", "EffectD"], "topk": 5,
                                                        "valid_metric": "EffectD"})
    assert config["valid_metric"] == "EffectD" and config["topk"] == [5]
    assert build_config("Pop", "tiny", config_dict={**base, "valid_metric": "hit@5"})["valid_metric"] == "hit@5"


def test_every_boolean_key_takes_true_or_false_only():
    """A key whose YAML default is True or False has a rule that refuses other values (RecBole reads
    --key=2 as the integer 2 and --key=maybe as a string)."""
    from recbole_lrgd.keys import plugin_keys
    from recbole_lrgd.validate import RULES

    booleans = [k.key for _, keys in plugin_keys() for k in keys if k.default in ("True", "False")]
    assert "fallback_zero_shot" in booleans and len(booleans) >= 4
    for key in booleans:
        assert RULES[key].ok(True) and RULES[key].ok(False), key
        assert not any(RULES[key].ok(v) for v in (2, 0, "maybe", "yes", None)), key


def test_a_partial_eval_args_on_the_command_line_names_the_missing_keys(base, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_recbole_lrgd.py", "--eval_args={'split':{'LS':'valid_and_test'}}"])
    _fails_first(monkeypatch, "eval_args on the command line is incomplete \\(missing group_by, order, mode\\)",
                 model="LRGD", dataset="tiny", config_dict=base)


@pytest.mark.parametrize("model,hint", [("lrgd", "LRGD"), ("sasrec", "SASRec"), ("SASRek", "SASRec"),
                                        ("bpr", "BPR"), ("NoSuchModel", None)])
def test_an_unknown_model_suggests_the_nearest_name_ignoring_case(base, monkeypatch, model, hint):
    message = _fails_first(monkeypatch, r"`model_name` \[" + model + r"\] is not the name of an existing model",
                           model=model, dataset="tiny", config_dict=base)
    assert message.endswith(f"; did you mean {hint!r}?" if hint else "existing model")


@pytest.mark.parametrize("key", ["model", "candidate_source", "prior_model"])
def test_a_model_whose_backend_is_not_installed_names_the_package(base, monkeypatch, key):
    if importlib.util.find_spec("lightgbm") is not None:
        pytest.skip("lightgbm is installed")
    match = f"^{key} 'lightgbm' needs the lightgbm package, which is not installed: pip install lightgbm$"
    if key == "model":
        _fails_first(monkeypatch, match, model="lightgbm", dataset="tiny", config_dict=base)
    else:
        _fails_first(monkeypatch, match, model="LRGD", dataset="tiny", config_dict={**base, key: "lightgbm"})


@pytest.mark.parametrize("key", ["candidate_source", "prior_model"])
def test_a_source_model_in_the_wrong_case_suggests_the_name(base, monkeypatch, key):
    _fails_first(monkeypatch, f"^{key} 'bpr' is neither a RecBole model name .*; did you mean 'BPR'\\?$",
                 model="LRGD", dataset="tiny", config_dict={**base, key: "bpr"})


# -- data checked before the LLM loads and the log file is written ----------------------------------
def _write_item_file(folder, titles):
    """Rewrite ``tiny.item`` with ``titles``: raw item id -> title (an empty one for none)."""
    with open(os.path.join(folder, "tiny", "tiny.item"), "w") as f:
        f.write("item_id:token\ttitle:token\n")
        f.writelines(f"{item}\t{title}\n" for item, title in titles.items())


def test_an_inter_file_with_a_header_only_is_one_line(base, monkeypatch):
    inter = os.path.join(base["data_path"], "tiny", "tiny.inter")
    with open(inter) as f:
        header = f.readline()
    with open(inter, "w") as f:
        f.write(header)
    for model in ("LRGD", "Pop"):
        _fails_first(monkeypatch, r"tiny\.inter has a header line but no data lines", model=model, dataset="tiny",
                     config_dict=base)


def test_item_ids_that_match_none_of_the_inter_are_one_line_and_some_a_warning(base, monkeypatch, caplog):
    _write_item_file(base["data_path"], {f"x{i}": f"Other Item {i}" for i in range(40)})
    _fails_first(monkeypatch, r"no item_id of .*tiny\.inter is in .*tiny\.item \(0 of 40 match\): RecBole would "
                 "drop every interaction", model="LRGD", dataset="tiny", config_dict=base)
    _write_item_file(base["data_path"], {**{f"i{i}": f"Item {i}" for i in range(10)},
                                         **{f"x{i}": f"Other Item {i}" for i in range(30)}})
    with open(os.path.join(base["data_path"], "tiny", "tiny.inter")) as f:
        dropped = sum(int(line.split("\t")[1][1:]) >= 10 for line in list(f)[1:])
    with caplog.at_level(logging.WARNING):
        build_config("LRGD", "tiny", config_dict=base)
    assert [r.getMessage() for r in caplog.records if "no line in" in r.getMessage()] == [
        f"30 of 40 items (75.0%) of {base['data_path']}/tiny/tiny.inter have no line in {base['data_path']}/tiny/"
        f"tiny.item: RecBole drops their {dropped} interactions (filter_inter_by_user_or_item)"]


def test_a_data_path_that_does_not_exist_is_one_line_not_the_bundled_ml100k(base, monkeypatch, tmp_path):
    """RecBole would fall back to its own copy of ml-100k."""
    missing = str(tmp_path / "no-such-folder")
    message = _fails_first(monkeypatch, "^unknown dataset 'ml-100k'", model="Pop", dataset="ml-100k",
                           config_dict={**base, "data_path": missing})
    assert message.endswith(f"no {missing}/ml-100k/ml-100k.inter (put ml-100k.inter and ml-100k.item under "
                            f"{missing}/ml-100k, or set data_path to their parent folder)")


@pytest.mark.parametrize("dataset", ["tiny", "ml-100k"])
def test_a_data_path_that_is_a_file_is_one_line(base, monkeypatch, tmp_path, dataset):
    """RecBole would read ml-100k from its own copy whatever data_path says."""
    afile = tmp_path / "afile.txt"
    afile.write_text("")
    _fails_first(monkeypatch, f"data_path {afile} is a file, not a folder: set it to the folder that holds "
                 f"{dataset}/{dataset}.inter", model="LRGD", dataset=dataset,
                 config_dict={**base, "data_path": str(afile)})


def test_titles_missing_for_most_candidates_stop_before_the_llm(base, monkeypatch):
    _write_item_file(base["data_path"], {f"i{i}": "" if i % 10 < 7 else f"Item {i}" for i in range(40)})
    _fails_first(monkeypatch, r"^\d+\.\d% of the candidates of the 5 evaluated users have no title in field 'title' "
                 r"of .*tiny\.item \(28 of 40 items \(70\.0%\) have none\): is title_field \(or the \.item file\) "
                 r"the right one\?$", model="LRGD", dataset="tiny", config_dict=base)


def test_some_missing_titles_are_one_warning_kept_for_the_log_file(base, monkeypatch, caplog):
    """Logged while the data is checked, before the log file exists: the warning reaches it all the same
    (and the console), after the config, with the dataset as loaded (before a sequential build)."""
    import recbole_lrgd.quick_start as quick_start

    _write_item_file(base["data_path"], {f"i{i}": "" if i % 10 < 3 else f"Item {i}" for i in range(40)})
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # logging as a fresh process has it: nothing set up
    monkeypatch.setattr(root, "level", logging.WARNING)
    loaded = []
    monkeypatch.setattr(quick_start, "load_config_llm", lambda config: loaded.append(os.path.isdir("log")))
    monkeypatch.setattr(quick_start, "llm_summary", lambda config: "LLM: stand-in")

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(LRGD, "__init__", stop)  # the run is over once the log is written
    try:
        with pytest.raises(Stop):
            run("LRGD", "tiny", config_dict={**base, "state": "INFO"})
    finally:
        for handler in root.handlers:
            handler.close()
    assert loaded == [False]  # the LLM loaded before the log file existed
    (log,) = [os.path.join("log", "LRGD", name) for name in os.listdir(os.path.join("log", "LRGD"))]
    with open(log) as f:
        text = f.read()
    warning = "12 of 40 items (30.0%) have no title in field 'title' of"
    assert text.count(warning) == 1 and text.index("LLM: stand-in") < text.index(warning)
    with open(os.path.join(base["data_path"], "tiny", "tiny.inter")) as f:
        assert f"The number of inters: {len(f.readlines()) - 1}\n" in text


ITEMS = " ".join(f"i{i}" for i in range(22))


@pytest.mark.parametrize("text,match", [
    (f"u1\t{ITEMS}\nnobody\t{ITEMS}\n", "line 2: user 'nobody' is not in the dataset"),
    (f"u1\t{ITEMS}\nu2\t{ITEMS} B00NOSUCH\n", "line 2: item 'B00NOSUCH' is not in the dataset"),
    (f"u1\t{ITEMS}\nu1\t{ITEMS}\n", "line 2: user 'u1' already has candidates on line 1"),
    ("u1\ti1 i2 i3 i4 i5\n", "line 1: [45] candidates besides the target, 19 needed"),
    (f"u1 {ITEMS}\n", "line 1: expected user_id, a tab, then space-separated item ids"),
])
def test_a_bad_candidates_file_is_one_line_before_the_llm(base, monkeypatch, tmp_path, text, match):
    path = tmp_path / "cands.txt"
    path.write_text(text)
    _fails_first(monkeypatch, match, model="LRGD", dataset="tiny", config_dict={**base, "candidates_file": str(path)})


def test_a_prompt_budget_below_the_shortest_prompt_is_one_line_before_the_llm(base, monkeypatch):
    """Checked with the tokenizer alone: the model is not loaded."""
    _fails_first(monkeypatch, r"max_prompt_tokens 30 is too small: .* alone take \d+ tokens; set max_prompt_tokens to "
                 r"at least \d+", model="LRGD", dataset="tiny", config_dict={**base, "max_prompt_tokens": 30})


@pytest.mark.parametrize("device,match", [
    ("cuda:7", "llm_device 'cuda:7': (this torch sees no CUDA GPU|there (is|are) [0-6] CUDA device)"),
    ("gpu", "llm_device 'gpu' is not a torch device"),
])
def test_an_llm_device_that_is_not_here_is_one_line(base, monkeypatch, device, match):
    _fails_first(monkeypatch, match, model="LRGD", dataset="tiny", config_dict={**base, "llm_device": device})


@pytest.mark.parametrize("where", ["under a file", "a folder", "read-only", "under /proc"])
def test_a_demo_state_file_that_cannot_be_written_is_one_line(base, monkeypatch, tmp_path, where):
    afile, folder = tmp_path / "afile", tmp_path / "ro"
    afile.write_text("")
    folder.mkdir()
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("permission bits do not stop root")
        folder.chmod(0o555)
    path, match = {"under a file": (afile / "state.json", f"{afile} is a file"),
                   "a folder": (folder, f"demo_state_file {folder} is a folder, not a file"),
                   "read-only": (folder / "state.json", "cannot be written"),
                   "under /proc": ("/proc/no/such/state.json",  # no one can write there, root included
                                   "the folder of demo_state_file '/proc/no/such' cannot be written")}[where]
    try:
        _fails_first(monkeypatch, match, model="LRGD", dataset="tiny",
                     config_dict={**base, "demo_mode": "lrgd", "demo_state_file": str(path)})
    finally:
        folder.chmod(0o755)

"""The run's RecBole Config: the plugin's YAML defaults below the user's files and keys, checked whole.

``build_config`` reads the user's files, builds RecBole's Config and checks it (unknown keys, values, data
files, the eval mode each model needs) before anything is written or loaded, so bad input is one line:
an ``LRGDError``.
"""
from __future__ import annotations

import difflib
import glob
import importlib
import importlib.util
import os
import pkgutil
from typing import Any, Dict, List, Optional

import yaml
from recbole.config import Config
from recbole.evaluator.register import metrics_dict
from recbole.utils import get_model

from recbole_lrgd import compat
from recbole_lrgd import distributed as dist
from recbole_lrgd.data.atomic import check_atomic_files
from recbole_lrgd.data.titles import item_file_header
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.evaluator import register_metrics
from recbole_lrgd.model import LRGD
from recbole_lrgd.properties_files import properties_dir, run_properties
from recbole_lrgd.rerank.retriever import check_source
from recbole_lrgd.trainer import LRGDTrainer
from recbole_lrgd.validate import check_values, check_writable_folder, warn_unknown_keys

PLUGIN_MODELS = {"LRGD": (LRGD, LRGDTrainer)}  # the plugin's models by name, each with its Trainer
EVAL_ARGS_KEYS = ("split", "group_by", "order", "mode")
PLUGIN_ONLY_METRICS = ("effectd",)
# where RecBole's get_model looks for a model: one module per model, named by its class's name in lower case
RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                          "knowledge_aware_recommender", "exlib_recommender")


def properties_files(model: str, dataset: str) -> List[str]:
    """The plugin's YAML defaults for a run, in RecBole's order: overall, model, dataset; a missing
    expected file is an ``LRGDError`` (``recbole_lrgd/properties_files.py``)."""
    return run_properties(model, dataset, plugin_model=model in PLUGIN_MODELS)


def check_model_name(model: str) -> None:
    """A name that is neither the plugin's model nor RecBole's is an ``LRGDError`` that suggests the nearest
    known name, ignoring case (``lrgd`` -> ``LRGD``, ``sasrec`` -> ``SASRec``)."""
    if model in PLUGIN_MODELS:
        return
    try:
        get_model(model)
        return
    except (ValueError, AttributeError):  # no module of that name; or a module of it, but in another case
        pass
    found = {name.lower(): name for name in PLUGIN_MODELS}  # lower-case name -> plugin model or RecBole module
    for package in RECBOLE_MODEL_PACKAGES:
        spec = importlib.util.find_spec(f"recbole.model.{package}")
        found.update({m.name: f"recbole.model.{package}.{m.name}"
                      for m in pkgutil.iter_modules(spec.submodule_search_locations)})
    close = difflib.get_close_matches(model.lower(), list(found), n=1)
    hint = f"; did you mean {_model_class_name(found[close[0]])!r}?" if close else ""
    raise LRGDError(f"`model_name` [{model}] is not the name of an existing model{hint}")


def _model_class_name(found: str) -> str:
    """A plugin model's name, or the model class a RecBole module holds (the module's name if it will not import:
    an exlib model without its backend, lightgbm or xgboost)."""
    if found in PLUGIN_MODELS:
        return found
    stem = found.rsplit(".", 1)[1]
    try:
        module = importlib.import_module(found)
    except ImportError:
        return stem
    return next((name for name, obj in vars(module).items() if name.lower() == stem and isinstance(obj, type)), stem)


def _check_eval_args(eval_args: Any, where: str) -> None:
    """RecBole merges configs shallowly: a partial eval_args silently drops the other keys."""
    if not isinstance(eval_args, dict):
        raise LRGDError(f"eval_args {where} must be a mapping of {', '.join(EVAL_ARGS_KEYS)}, not {eval_args!r}")
    missing = [k for k in EVAL_ARGS_KEYS if k not in eval_args]
    if missing:
        raise LRGDError(f"eval_args {where} is incomplete (missing {', '.join(missing)}): RecBole replaces the "
                        f"whole dict, so give all of {', '.join(EVAL_ARGS_KEYS)}")


def _read_user_config(files: List[str], config_dict: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Every user file parses to a mapping (an empty file to none), and every eval_args given is complete.
    Returns path -> its keys and values, for the files RecBole will read (the empty ones are left out)."""
    loaded_files: Dict[str, Dict[str, Any]] = {}
    for path in files:
        if not os.path.isfile(path):
            raise LRGDError(f"config file {path!r} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise LRGDError(f"config file {path!r}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise LRGDError(f"config file {path!r} holds a {type(loaded).__name__}, not key: value lines")
        if "eval_args" in loaded:
            _check_eval_args(loaded["eval_args"], f"in {path}")
        loaded_files[path] = loaded
    if config_dict and "eval_args" in config_dict:
        _check_eval_args(config_dict["eval_args"], "in config_dict")
    return loaded_files


def build_config(model: str = "LRGD", dataset: str = "ml-100k", config_file_list: Optional[List[str]] = None,
                 config_dict: Optional[Dict[str, Any]] = None, warn_unknown: bool = True) -> Config:
    """A RecBole Config with the plugin's properties below the user's files and dict, checked: unknown keys
    get a warning (unless ``warn_unknown`` is False: a second config of the same keys), bad values and data
    an ``LRGDError``."""
    compat.apply()  # RecBole 1.2.1 on this stack; before the first Config(), for every entry point
    register_metrics()  # ``metrics: [..., EffectD]``
    user_files = _read_user_config(list(config_file_list or []), config_dict)
    files = properties_files(model, dataset) + list(user_files)
    model_arg = PLUGIN_MODELS[model][0] if model in PLUGIN_MODELS else model
    try:
        check_model_name(model)
        try:
            config = Config(model=model_arg, dataset=dataset, config_file_list=files, config_dict=config_dict)
        except ValueError as exc:
            if "loss_type is CE" not in str(exc):
                raise
            # CE-loss sequential models (SASRec, GRU4Rec, BERT4Rec...) train without sampled negatives
            config = Config(model=model_arg, dataset=dataset, config_file_list=files,
                            config_dict={**(config_dict or {}), "train_neg_sample_args": None})
    except (ValueError, TypeError, NotImplementedError, RuntimeError, SyntaxError) as exc:
        raise LRGDError(_config_error(exc)) from None
    if "eval_args" in config.cmd_config_dict:  # RecBole fills a partial one from its own defaults
        _check_eval_args(config.cmd_config_dict["eval_args"], "on the command line")
    if dist.is_main() and warn_unknown:
        given = {f"in {path}": list(keys) for path, keys in user_files.items()}
        given.update({"in config_dict": list(config_dict or {}), "on the command line": list(config.cmd_config_dict)})
        warn_unknown_keys(given, glob.glob(os.path.join(properties_dir(), "**", "*.yaml"), recursive=True))
    check_values(config)
    validate_config(config, is_plugin=model in PLUGIN_MODELS)
    if model not in PLUGIN_MODELS:
        drop_plugin_only_metrics(config)
    return config


def _config_error(exc: Exception) -> str:
    """RecBole's Config refusing a value, as one line (with the metric names where it names no metric)."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if line.startswith("There is no metric named"):
        line = f"metrics: {line[0].lower()}{line[1:]} (RecBole's: {', '.join(sorted(metrics_dict))})"
    return line


def drop_plugin_only_metrics(config: Config) -> None:
    """EffectD compares LRGD with and without demonstrations: RecBole baselines have no such thing."""
    config["metrics"] = [m for m in config["metrics"] if m.lower() not in PLUGIN_ONLY_METRICS]
    if config["valid_metric"].split("@")[0].lower() in PLUGIN_ONLY_METRICS:
        config["valid_metric"] = f"{config['metrics'][0]}@{max(config['topk'])}"
        config["valid_metric_bigger"] = True


def _check_fusion(config: Config) -> None:
    """``prior_model`` fuses scores of sampled candidates; ``auto`` needs validation users to choose on."""
    if config["candidate_source"]:
        raise LRGDError("prior_model and candidate_source both set: fuse on sampled candidates (prior_model) or "
                        "re-rank a retriever's full ranking (candidate_source, rerank_blend), not both")
    if "full" in (_eval_mode(config, "test"), _eval_mode(config, "valid")):
        raise LRGDError("prior_model fuses scores of sampled candidates (eval_args mode uni19 or pop19): for a full "
                        "ranking re-rank a retriever's top-N with candidate_source and rerank_blend")
    if config["prior_weight"] == "auto" and config["valid_users"] is None:
        raise LRGDError("prior_weight auto chooses the weight on validation users: set valid_users (e.g. 200), "
                        "or give prior_weight a number in [0, 1]")


def _eval_mode(config: Config, phase: str) -> str:
    mode = config["eval_args"]["mode"]
    return str(mode[phase] if isinstance(mode, dict) else mode)


def validate_config(config: Config, is_plugin: bool) -> None:
    """Catch bad input before anything is written."""
    _check_eval_args(config["eval_args"], "in the final config")
    dataset, data_path = config["dataset"], config["data_path"]
    given = config.external_config_dict.get("data_path")  # RecBole's data_path is <given>/<dataset>, or ml-100k's copy
    if isinstance(given, str) and os.path.exists(given) and not os.path.isdir(given):
        raise LRGDError(f"data_path {given} is a file, not a folder: set it to the folder that holds "
                        f"{dataset}/{dataset}.inter")
    inter = os.path.join(data_path, f"{dataset}.inter")
    if not os.path.isfile(inter):
        raise LRGDError(f"unknown dataset {dataset!r}: no {inter} (put {dataset}.inter and {dataset}.item "
                        f"under {data_path}, or set data_path to their parent folder)")
    test_neg = config["test_neg_sample_args"] or {}
    sampled = test_neg.get("distribution", "none") != "none" and test_neg.get("sample_num", "none") != "none"
    if sampled:
        block = 1 + int(test_neg["sample_num"])
        if int(config["eval_batch_size"]) < block:
            raise LRGDError(f"eval_batch_size {config['eval_batch_size']} is smaller than one user's block "
                            f"of {block} rows (1 positive + {test_neg['sample_num']} negatives)")
    check_atomic_files(config)
    if is_plugin:
        _check_rerank(config)
    candidates_file = config["candidates_file"]
    if candidates_file:
        if not os.path.isfile(candidates_file):
            raise LRGDError(f"candidates_file {candidates_file} " + (
                "is a folder, not a file" if os.path.isdir(candidates_file) else "does not exist"))
        if not os.access(candidates_file, os.R_OK):
            raise LRGDError(f"candidates_file {candidates_file} cannot be read (no read permission)")
        if not sampled:
            raise LRGDError(f"candidates_file needs a sampled eval mode (uniN or popN, N-1 negatives per user), "
                            f"not {_eval_mode(config, 'test')!r}")
    if is_plugin:
        if not sampled and not config["candidate_source"]:
            raise LRGDError(f"LRGD ranks sampled candidates: eval_args mode {_eval_mode(config, 'test')!r} must be "
                            "uniN or popN (e.g. uni19), or set candidate_source to re-rank a retriever's full ranking")
        if config["title_field"] not in item_file_header(data_path, dataset):
            raise LRGDError(f"{os.path.join(data_path, dataset + '.item')} has no title field "
                            f"{config['title_field']!r}: set title_field to one of its columns")
        state_file = config["demo_state_file"]
        if config["demo_mode"] == "lrgd" and state_file:  # written after stage 1's first unit of work
            if os.path.isdir(state_file):
                raise LRGDError(f"demo_state_file {state_file} is a folder, not a file")
            check_writable_folder(os.path.dirname(os.path.abspath(state_file)), "the folder of demo_state_file")


def _check_rerank(config: Config) -> None:
    """``candidate_source`` and its keys: the retriever's full ranking is re-ranked on the test users only,
    with one held-out item each, by RecBole's top-k metrics (EffectD compares sampled candidate lists). And
    ``prior_model``'s: fusion on sampled candidates, its ``auto`` weight chosen on validation users."""
    check_source(config, "candidate_source")
    check_source(config, "prior_model")
    if config["prior_model"]:
        _check_fusion(config)
    if not config["candidate_source"]:
        return
    if config["candidates_file"]:
        raise LRGDError("candidates_file and candidate_source both set: give fixed candidates or a retriever, not both")
    full = {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"}
    if _eval_mode(config, "test") != "full":
        raise LRGDError(f"candidate_source re-ranks a full ranking: set eval_args to {full} "
                        f"(test mode {_eval_mode(config, 'test')!r} now)")
    if "LS" not in (config["eval_args"]["split"] or {}):
        raise LRGDError(f"candidate_source needs one held-out test item per user: eval_args split {{'LS': ...}}, "
                        f"as in {full}")
    if _eval_mode(config, "valid") == "full" and config["valid_users"] is not None:
        raise LRGDError("candidate_source re-ranks test users only: validate LRGD on sampled candidates "
                        "(eval_args mode {'valid': 'uni19', 'test': 'full'}) or set valid_users to ~")
    if any(m.lower() in PLUGIN_ONLY_METRICS for m in config["metrics"]):
        raise LRGDError("EffectD compares sampled candidate lists: drop it from metrics with candidate_source")

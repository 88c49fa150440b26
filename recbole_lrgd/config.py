"""The run's RecBole Config: the plugin's YAML defaults below the user's files and keys, checked whole.

``build_config`` reads the user's files, builds RecBole's Config and checks it (``validate``: unknown keys,
values, data files, the eval mode each model needs) before anything is written or loaded, so bad input is one
line: an ``LRGDError``.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Optional

import yaml
from recbole.config import Config
from recbole.evaluator.register import metrics_dict

from recbole_lrgd import compat
from recbole_lrgd import distributed as dist
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.evaluator import register_metrics
from recbole_lrgd.model import LRGD
from recbole_lrgd.model_names import did_you_mean, recbole_model
from recbole_lrgd.properties_files import properties_dir, run_properties
from recbole_lrgd.trainer import LRGDTrainer
from recbole_lrgd.validate import PLUGIN_ONLY_METRICS, check_eval_args, check_values, validate_config, warn_unknown_keys

PLUGIN_MODELS = {"LRGD": (LRGD, LRGDTrainer)}  # the plugin's models by name, each with its Trainer


def properties_files(model: str, dataset: str) -> List[str]:
    """The plugin's YAML defaults for a run, in RecBole's order: overall, model, dataset; a missing
    expected file is an ``LRGDError`` (``recbole_lrgd/properties_files.py``)."""
    return run_properties(model, dataset, plugin_model=model in PLUGIN_MODELS)


def check_model_name(model: str) -> None:
    """A name that is neither the plugin's model nor RecBole's is an ``LRGDError`` that suggests the nearest
    known name, ignoring case (``lrgd`` -> ``LRGD``, ``sasrec`` -> ``SASRec``)."""
    if model not in PLUGIN_MODELS and recbole_model(model) is None:
        raise LRGDError(f"`model_name` [{model}] is not the name of an existing model"
                        f"{did_you_mean(model, PLUGIN_MODELS)}")


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
            check_eval_args(loaded["eval_args"], f"in {path}")
        loaded_files[path] = loaded
    if config_dict and "eval_args" in config_dict:
        check_eval_args(config_dict["eval_args"], "in config_dict")
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
        check_eval_args(config.cmd_config_dict["eval_args"], "on the command line")
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

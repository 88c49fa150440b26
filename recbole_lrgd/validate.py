"""Config keys checked before anything is written: each plugin key's type and range (its settings field's
rule, ``settings.RULES``), RecBole's keys the plugin reads, and a warning
(with a "did you mean") for a key that neither RecBole nor the plugin knows, which RecBole would
otherwise keep silently while the run uses the default of the key that was meant.
"""
from __future__ import annotations

import difflib
import glob
import os
import tempfile
from functools import lru_cache
from logging import getLogger
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Sequence

import yaml

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.settings import RULES, Rule, is_int, integer, text

# keys RecBole reads without declaring them in a YAML of its own: the model and dataset arguments, the
# ones Config sets (device, types, negative-sampling args), its DDP launch keys, the legacy neg_sampling,
# the atomic files' encoding
RECBOLE_RUNTIME_KEYS = ("model", "dataset", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "single_spec",
                        "local_rank", "verbose", "valid_neg_sample_args", "test_neg_sample_args", "nproc",
                        "world_size", "offset", "ip", "port", "neg_sampling", "encoding")
# run_recbole_lrgd.py's own --key=value flags, which RecBole also reads from the command line
CLI_KEYS = ("config_files", "result_file")


def _topk(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(is_int(k) and k >= 1 for k in values)


# RecBole's own keys the plugin reads, checked as its own (Config checks metrics, topk and eval_args' type)
RECBOLE_RULES: Dict[str, Rule] = {
    "seed": integer(0),
    "topk": Rule(_topk, "a positive integer or a list of them"),
    "data_path": text(none=False),
    "checkpoint_dir": text(none=False),
    "valid_metric": text(none=False),
}


def check_values(config) -> None:
    """Each plugin key the config holds has a value its rule accepts (one ``LRGDError`` otherwise). RecBole
    reads ``--key=~`` from the command line as the string '~': that means ~ (None) here."""
    for key, rule in {**RECBOLE_RULES, **RULES}.items():
        if key not in config:
            continue
        value = config[key]
        if value == "~":
            config[key] = value = None
        if not rule.ok(value):
            raise LRGDError(f"{key} must be {rule.expected}, not {value!r}")
    check_valid_metric(config["valid_metric"], config["metrics"], config["topk"])
    check_writable_folder(config["checkpoint_dir"], "checkpoint_dir")
    if config["lrgd_scope"] == "per_user" and config["library_size"] < config["num_demos"]:
        raise LRGDError(f"library_size {config['library_size']} is smaller than num_demos {config['num_demos']}: "
                        "with lrgd_scope per_user each user retrieves num_demos from the library")


def check_valid_metric(valid_metric: str, metrics: Sequence[str], topk: Sequence[int]) -> None:
    """``valid_metric`` names one of ``metrics``, at one of ``topk`` for a top-k metric: RecBole reads it from the
    validation results after the first epoch (a KeyError then), or, for LRGD, never."""
    from recbole.evaluator.register import metrics_dict

    def at_k(metric: str) -> bool:  # RecBole reports it per cut-off, as <metric>@<k>
        need = getattr(metrics_dict.get(metric.lower()), "metric_need", [])
        return bool({"rec.topk", "rec.items"} & set(need))

    name, at, k = valid_metric.partition("@")
    if (name.lower() not in {m.lower() for m in metrics} or bool(at) != at_k(name)
            or (at and not (k.isdigit() and int(k) in topk))):
        options = [f"{m}@{max(topk)}" if at_k(m) else m for m in metrics]
        raise LRGDError(f"valid_metric {valid_metric!r} is not among the evaluated metrics (metrics {list(metrics)}, "
                        f"topk {list(topk)}): e.g. {', '.join(options)}")


def check_writable_folder(path: str, key: str) -> None:
    """``path`` is a folder this process can create files in, or can be created: its nearest existing
    ancestor is a folder that takes a new entry (tried with an empty folder, removed at once, since
    permission bits do not bind root)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise LRGDError(f"{key} {path!r} cannot be a folder: {existing} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".lrgd-write-check-"))
    except OSError as exc:
        raise LRGDError(f"{key} {path!r} cannot be written: {existing} does not take new files "
                        f"({exc.strerror})") from None


def _yaml_keys(path: str) -> FrozenSet[str]:
    with open(path, encoding="utf-8") as f:
        loaded = yaml.safe_load(f)
    return frozenset(loaded) if isinstance(loaded, dict) else frozenset()


@lru_cache(maxsize=1)
def recbole_keys() -> FrozenSet[str]:
    """Every key of RecBole's own YAMLs (overall, each model, each dataset, quick-start sets), its
    argument lists and ``RECBOLE_RUNTIME_KEYS``; url.yaml files map dataset names, not keys."""
    import recbole
    from recbole.utils import dataset_arguments, evaluation_arguments, general_arguments, training_arguments

    folder = os.path.join(os.path.dirname(recbole.__file__), "properties")
    keys = set(RECBOLE_RUNTIME_KEYS) | set(general_arguments + training_arguments + evaluation_arguments
                                           + dataset_arguments)
    for path in glob.glob(os.path.join(folder, "**", "*.yaml"), recursive=True):
        if not path.endswith("url.yaml"):
            keys |= _yaml_keys(path)
    return frozenset(keys)


def known_keys(plugin_files: Iterable[str]) -> FrozenSet[str]:
    """RecBole's keys, the plugin's (every YAML in ``plugin_files``) and the CLI's own flags."""
    keys = set(recbole_keys()) | set(CLI_KEYS)
    for path in plugin_files:
        keys |= _yaml_keys(path)
    return frozenset(keys)


def unknown_key_messages(given: Mapping[str, Iterable[str]], known: FrozenSet[str]) -> list:
    """One line per unknown key of ``given`` (where -> keys), with the closest known key when one is close."""
    lines = []
    for where, keys in given.items():
        for key in keys:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "not a RecBole or recbole_lrgd key: it is ignored"
            lines.append(f"unknown config key {key!r} {where} ({hint})")
    return lines


def warn_unknown_keys(given: Mapping[str, Iterable[str]], plugin_files: Iterable[str]) -> None:
    """Log a warning per unknown key, before the run (and before RecBole's logger is set up)."""
    for line in unknown_key_messages(given, known_keys(plugin_files)):
        getLogger(__name__).warning(line)

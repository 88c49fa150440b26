"""Config keys checked before anything is written: each plugin key's type and range, and a warning
(with a "did you mean") for a key that neither RecBole nor the plugin knows, which RecBole would
otherwise keep silently while the run uses the default of the key that was meant.
"""
from __future__ import annotations

import difflib
import glob
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from logging import getLogger
from numbers import Real
from typing import Any, Callable, Dict, FrozenSet, Iterable, Mapping, Optional, Sequence

import yaml

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.loader import DTYPES
from recbole_lrgd.llm.prompt import DEMO_FORMATS
from recbole_lrgd.llm.scorer import SCORER_MODES, TITLE_SCORES
from recbole_lrgd.model.lrgd import DEMO_MODES
from recbole_lrgd.optimizer.two_stage import SCOPES

# keys RecBole reads without declaring them in a YAML of its own: the model and dataset arguments, the
# ones Config sets (device, types, negative-sampling args), its DDP launch keys, the legacy neg_sampling,
# the atomic files' encoding
RECBOLE_RUNTIME_KEYS = ("model", "dataset", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "single_spec",
                        "local_rank", "verbose", "valid_neg_sample_args", "test_neg_sample_args", "nproc",
                        "world_size", "offset", "ip", "port", "neg_sampling", "encoding")
# run_recbole_lrgd.py's own --key=value flags, which RecBole also reads from the command line
CLI_KEYS = ("config_files", "result_file")


@dataclass(frozen=True)
class Rule:
    """What a key accepts: ``ok(value)``, described as ``expected`` in the error."""

    ok: Callable[[Any], bool]
    expected: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, none: str = "", only: Sequence[int] = ()) -> Rule:
    """An integer >= ``low`` (or one of ``only``); ``none`` describes what ``~`` means, where allowed."""
    expected = " or ".join(map(str, only)) if only else ("a positive integer" if low == 1 else f"an integer >= {low}")
    return Rule(lambda v: (none and v is None) or (_is_int(v) and (v in only if only else v >= low)),
                expected + (f" or ~ ({none})" if none else ""))


def number(low: float, high: Optional[float] = None, above: bool = False, word: str = "") -> Rule:
    """A number in [low, high] (``above``: > low), or the string ``word`` where given."""
    def ok(v: Any) -> bool:
        if word and v == word:
            return True
        if not isinstance(v, Real) or isinstance(v, bool):
            return False
        return (v > low if above else v >= low) and (high is None or v <= high)
    expected = f"a number {'>' if above else '>='} {low}" + (f" and <= {high}" if high is not None else "")
    return Rule(ok, expected + (f" or {word}" if word else ""))


def choice(options: Iterable[str], none: bool = False) -> Rule:
    options = tuple(options)
    return Rule(lambda v: v in options or (none and v is None), "one of " + ", ".join(options) + (" or ~" if none else ""))


def boolean(word: str = "", none: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, bool) or (word and v == word) or (none and v is None),
                "True or False" + (f" or {word}" if word else "") + (" or ~" if none else ""))


def text(none: bool = True) -> Rule:
    return Rule(lambda v: isinstance(v, str) or (none and v is None), "a string" + (" or ~" if none else ""))


# every plugin key of properties/ (overall.yaml and model/LRGD.yaml), checked where the config has it
RULES: Dict[str, Rule] = {
    "eval_users": integer(1, none="all users"),
    "valid_users": integer(1, none="no validation for LRGD, all users for RecBole models"),
    "retriever_valid_users": integer(1, none="all users"),
    "candidates_file": text(),
    "llm_path": text(),
    "llm_device": text(),
    "llm_dtype": choice(["auto", *DTYPES]),
    "llm_device_map": text(),
    "llm_cache_dir": text(),
    "scorer_mode": choice(SCORER_MODES),
    "title_score": choice(TITLE_SCORES),
    "title_score_tokens": integer(1),
    "candidate_batch_size": integer(1),
    "user_batch_size": integer(1),
    "max_new_tokens": integer(1),
    "title_match_threshold": number(0, 1),
    "score_cache": boolean(),
    "score_cache_dir": text(none=False),
    "demo_mode": choice(DEMO_MODES, none=True),
    "num_demos": integer(0),
    "demo_format": choice(DEMO_FORMATS),
    "demo_negatives": integer(1),
    "list_candidates": boolean("auto", none=True),
    "max_his_len": integer(1),
    "max_prompt_tokens": integer(1, none="no limit"),
    "max_title_tokens": integer(1, none="whole titles"),
    "prompt_instruction": text(),
    "title_field": text(none=False),
    "effect_temperature": number(0, above=True, word="auto"),
    "lrgd_stages": integer(1, only=(1, 2)),
    "lrgd_scope": choice(SCOPES),
    "library_size": integer(1),
    "pool_size": integer(1),
    "probe_users": integer(1),
    "probe_negatives": integer(1),
    "perturb_num": integer(0),
    "perturb_rate": number(0, 1),
    "lambda_std": number(0),
    "lambda_redundancy": number(0),
    "lambda_copy": number(0),
    "lambda_reg": number(0),
    "demo_token_budget": integer(1, none="no budget"),
    "stage2_steps": integer(0),
    "stage2_patience": integer(1),
    "stage2_candidates": integer(1),
    "demo_state_file": text(),
    "warm_start": boolean(),
    "rerank_score_all": boolean(),
    "fallback_zero_shot": boolean(),
}


def _topk(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(_is_int(k) and k >= 1 for k in values)


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

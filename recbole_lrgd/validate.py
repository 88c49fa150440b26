"""Config keys checked before anything is written: each plugin key's type and range (its settings field's
rule, ``settings.RULES``), RecBole's keys the plugin reads, and a warning
(with a "did you mean") for a key that neither RecBole nor the plugin knows, which RecBole would
otherwise keep silently while the run uses the default of the key that was meant; then the built config as a
whole (``validate_config``): the data files, the eval mode each model needs, re-ranking and fusion.
"""
from __future__ import annotations

import difflib
import glob
import os
import tempfile
from functools import lru_cache
from logging import getLogger
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Iterable, Mapping, Sequence

import yaml

from recbole_lrgd.checkpoints import check_source
from recbole_lrgd.data.atomic import check_atomic_files
from recbole_lrgd.data.titles import item_file_header
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.properties_files import shipped_defaults
from recbole_lrgd.settings import RULES, Rule, boolean, integer, is_int, number, text

if TYPE_CHECKING:
    from recbole.config import Config

# keys RecBole reads without declaring them in a YAML of its own: the model and dataset arguments, the
# ones Config sets (device, types, negative-sampling args), its DDP launch keys, the legacy neg_sampling,
# the atomic files' encoding
RECBOLE_RUNTIME_KEYS = ("model", "dataset", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "single_spec",
                        "local_rank", "verbose", "valid_neg_sample_args", "test_neg_sample_args", "nproc",
                        "world_size", "offset", "ip", "port", "neg_sampling", "encoding")
# run_recbole_lrgd.py's own --key=value flags, which RecBole also reads from the command line
CLI_KEYS = ("config_files", "result_file")
EVAL_ARGS_KEYS = ("split", "group_by", "order", "mode")
PLUGIN_ONLY_METRICS = ("effectd",)  # metrics only LRGD reports (EffectD compares it with and without demonstrations)


def _topk(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(is_int(k) and k >= 1 for k in values)


# the eval_args of a run that re-ranks a retriever's full ranking (candidate_source): one held-out item per user
FULL_EVAL_ARGS = {**shipped_defaults("overall.yaml")["eval_args"], "mode": "full"}

# RecBole's own keys the plugin reads without a settings field, checked as its own (Config checks metrics, topk and
# eval_args' type), and RecBole's training keys, whose wrong type would be a traceback deep inside a training
RECBOLE_RULES: Dict[str, Rule] = {
    "topk": Rule(_topk, "a positive integer or a list of them"),
    "data_path": text(none=False),
    "checkpoint_dir": text(none=False),
    "valid_metric": text(none=False),
    "epochs": integer(0),
    "train_batch_size": integer(1),
    "learning_rate": number(0, above=True),
    "weight_decay": number(0),
    "eval_step": integer(0),
    "stopping_step": integer(0),
    "show_progress": boolean(),  # RecBole would take any word as True
    "reproducibility": boolean(),
}


def check_values(config: Config) -> None:
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


def check_eval_args(eval_args: Any, where: str) -> None:
    """RecBole merges configs shallowly: a partial eval_args silently drops the other keys."""
    if not isinstance(eval_args, dict):
        raise LRGDError(f"eval_args {where} must be a mapping of {', '.join(EVAL_ARGS_KEYS)}, not {eval_args!r}")
    missing = [k for k in EVAL_ARGS_KEYS if k not in eval_args]
    if missing:
        raise LRGDError(f"eval_args {where} is incomplete (missing {', '.join(missing)}): RecBole replaces the "
                        f"whole dict, so give all of {', '.join(EVAL_ARGS_KEYS)}")


def validate_config(config: Config, is_plugin: bool) -> None:
    """Catch bad input before anything is written."""
    check_eval_args(config["eval_args"], "in the final config")
    dataset, data_path = config["dataset"], config["data_path"]
    given = config.external_config_dict.get("data_path")  # RecBole's data_path is <given>/<dataset>, or ml-100k's copy
    if isinstance(given, str) and os.path.exists(given) and not os.path.isdir(given):
        raise LRGDError(f"data_path {given} is a file, not a folder: set it to the folder that holds "
                        f"{dataset}/{dataset}.inter")
    if isinstance(given, str) and not os.path.exists(given):
        data_path = os.path.join(given, dataset)  # the folder named; RecBole would fall back to its own ml-100k
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
    if _eval_mode(config, "test") != "full":
        raise LRGDError(f"candidate_source re-ranks a full ranking: set eval_args to {FULL_EVAL_ARGS} "
                        f"(test mode {_eval_mode(config, 'test')!r} now)")
    if "LS" not in (config["eval_args"]["split"] or {}):
        raise LRGDError(f"candidate_source needs one held-out test item per user: eval_args split {{'LS': ...}}, "
                        f"as in {FULL_EVAL_ARGS}")
    if _eval_mode(config, "valid") == "full" and config["valid_users"] is not None:
        raise LRGDError("candidate_source re-ranks test users only: validate LRGD on sampled candidates "
                        "(eval_args mode {'valid': 'uni19', 'test': 'full'}) or set valid_users to ~")
    if any(m.lower() in PLUGIN_ONLY_METRICS for m in config["metrics"]):
        raise LRGDError("EffectD compares sampled candidate lists: drop it from metrics with candidate_source")


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

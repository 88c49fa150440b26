"""The benchmark's store of finished rows: what identifies a row, and the JSON file that keeps it.

A row is kept under ``row_key(dataset, variant, config_hash(...))``: the hash covers what decides the
row's numbers (model, dataset, config keys, the contents of the config, properties and candidates files),
so a benchmark run again reuses a stored row only where nothing that matters changed. ``make_row`` turns
``quick_start.run``'s result into a row; ``load_rows`` and ``save_rows`` read and write
``<out>/<name>.json``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from typing import Any, Dict, Optional, Sequence

import yaml

from recbole_lrgd.benchmark.variants import PROTOCOLS
from recbole_lrgd.config import properties_files
from recbole_lrgd.evaluator.slices import Slices
from recbole_lrgd.digest import digest
from recbole_lrgd.results import RunResult
from recbole_lrgd.whole_file import write_whole

# keys that change how a run looks or where it writes, not its numbers
VOLATILE_KEYS = {"show_progress", "state", "score_cache", "score_cache_dir", "checkpoint_dir", "log_wandb",
                 "wandb_project", "worker", "gpu_id", "slices"}


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return f"unreadable:{path}"


def _yaml_digest(path: str) -> str:
    """A properties file's keys and values (not its comments, which change no number)."""
    try:
        with open(path, encoding="utf-8") as f:
            return digest(yaml.safe_load(f), "sha256")
    except (OSError, yaml.YAMLError):
        return _file_digest(path)


def config_hash(dataset: str, model: str, config_dict: Dict[str, Any], config_files: Sequence[str]) -> str:
    """A short hash of what decides a row's numbers: model, dataset, the final config keys given,
    the contents of the user's files, the keys and values of the plugin's properties files and the contents
    of ``candidates_file``."""
    payload = {
        "dataset": dataset, "model": model,
        "config": {k: v for k, v in sorted(config_dict.items()) if k not in VOLATILE_KEYS},
        "files": [_file_digest(p) for p in config_files],
        "properties": [_yaml_digest(p) for p in properties_files(model, dataset)],
    }
    cands = config_dict.get("candidates_file")
    if cands:
        payload["candidates_file"] = _file_digest(cands)
    return digest(payload, "sha256")[:16]


def _number(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def make_row(name: str, model: str, dataset: str, digest: str, result: RunResult,
             protocol: str = "sampled") -> Dict[str, Any]:
    """One table row; the JSON store also keeps per-user NDCG@10 (for paired bootstraps, as RecBole's
    evaluation computed it: ``result.test_per_user``), for LRGD's optimizer the seconds of each stage and,
    for a re-ranking, its ``rerank_top``."""
    values = {**result.test_result, "target_in_top_n": result.target_in_top_n}
    row = {"variant": name, "model": model}
    row.update({k: _number(values.get(k)) for k, _ in PROTOCOLS[protocol].metrics})
    row.update({"fit_time_s": round(float(result.fit_time), 2), "eval_time_s": round(float(result.eval_time), 2),
                "test_users": int(result.test_users), "candidates": result.candidates,
                "dataset": dataset, "config_hash": digest})
    if result.target_in_top_n is not None:
        row["rerank_top"] = int(result.rerank_top)
    if result.retriever_time is not None:
        row["retriever_time_s"] = round(float(result.retriever_time), 2)
    if result.prior_weight is not None:
        row["prior_weight"] = result.prior_weight
    if result.fit is not None:
        row.update({f"{stage}_s": round(float(seconds), 2) for stage, seconds in result.fit.stage_seconds.items()})
    ndcg = result.test_per_user.get("ndcg@10")
    if ndcg:
        row["per_user_ndcg10"] = {str(u): v for u, v in sorted(ndcg.items())}
    return row


def row_key(dataset: str, variant: str, digest: str) -> str:
    """Where a finished row is kept in the JSON store."""
    return f"{dataset}|{variant}|{digest}"


def load_rows(path: str) -> Dict[str, Dict[str, Any]]:
    """Finished rows of earlier runs (an unreadable store is set aside, not trusted)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)["rows"]
        return {row_key(r["dataset"], r["variant"], r["config_hash"]): r for r in rows}
    except (OSError, ValueError, KeyError, TypeError):
        os.replace(path, path + ".corrupt")
        print(f"warning: {path} was unreadable; moved to {path}.corrupt and starting afresh", file=sys.stderr)
        return {}


def save_rows(path: str, store: Dict[str, Dict[str, Any]]) -> None:
    """Write the store (``row_key`` -> row) whole, in the form ``load_rows`` reads."""
    write_whole(path, json.dumps({"rows": list(store.values())}, indent=1, sort_keys=True))


def save_slices(path: str, slices: Slices) -> None:
    """The test users' slices (``--slices``) beside the rows, so a report reads them without the data."""
    write_whole(path, json.dumps({"order": {f: list(names) for f, names in slices.order.items()},
                                  "labels": {f: {str(u): name for u, name in sorted(labels.items())}
                                             for f, labels in slices.labels.items()}}, indent=1, sort_keys=True))


def load_slices(path: str) -> Optional[Slices]:
    """The slices ``save_slices`` wrote, or None without the file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return Slices({f: tuple(names) for f, names in saved["order"].items()},
                  {f: {int(u): name for u, name in labels.items()} for f, labels in saved["labels"].items()})

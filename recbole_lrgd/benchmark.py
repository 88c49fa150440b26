"""Side-by-side benchmark: LRGD variants and RecBole baselines on one dataset, one split, one candidate set.

    python benchmarks/compare.py --dataset=ml-100k
    python run_recbole_lrgd.py --benchmark --dataset=amazon-beauty --data_path=../shared/data \\
           --models=LRGD-zero-shot,Pop,SASRec --eval_users=200
    python benchmarks/compare.py --protocol=full --dataset=ml-100k --models='Pop,BPR>alone,BPR>LRGD-zero-shot'

Every row goes through ``recbole_lrgd.quick_start.run`` with the same config (plus the variant's
own keys), so all models see the same split, the same evaluated users and the same candidates
(``candidates_file`` included). Writes ``<out>/<name>.md``, ``.csv`` and ``.png`` and prints the
table. Finished rows are kept in ``<out>/<name>.json``, keyed by (dataset, variant, a hash of the
config that matters): an interrupted benchmark, run again, skips them and runs the rest.

Two protocols. ``sampled`` (the default): each test user ranks its target among sampled candidates
(``eval_args`` of properties/overall.yaml, or the user's). ``full``: every row ranks the whole catalogue
(RecBole's full mode, Recall/NDCG/MRR@10), and LRGD re-ranks a retriever's top ``rerank_top``
(``candidate_source``), named ``<Retriever>>LRGD-<mode>[@<blend>]``; ``<Retriever>>alone`` is LRGD at
``rerank_blend`` 1, the retriever's own order with the user's history excluded, which is the row each
re-ranking is compared with (RecBole's own full sort of a sequential model keeps the history).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from recbole_lrgd.console import quiet_libraries
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.whole_file import write_whole

# variant name -> (RecBole model, config keys of the variant); baselines keep RecBole's defaults
VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "LRGD-zero-shot": ("LRGD", {"demo_mode": "none"}),
    "LRGD-random": ("LRGD", {"demo_mode": "random"}),
    "LRGD-nearest": ("LRGD", {"demo_mode": "nearest"}),
    "LRGD-stage1": ("LRGD", {"demo_mode": "lrgd", "lrgd_stages": 1}),
    "LRGD-stage1+2": ("LRGD", {"demo_mode": "lrgd", "lrgd_stages": 2}),
    "Pop": ("Pop", {}),
    "BPR": ("BPR", {}),
    "SASRec": ("SASRec", {}),
    "GRU4Rec": ("GRU4Rec", {}),
    "BERT4Rec": ("BERT4Rec", {}),
}
# re-ranking variants (full protocol), parsed by resolve_variant rather than listed
RERANK_GRAMMAR = "<Retriever>>LRGD-<mode>[@<blend>] or <Retriever>>alone"
ALONE = "alone"
# <mode> of LRGD-<mode> -> LRGD's keys: those of the LRGD variants above, and lrgd (the optimizer, LRGD.yaml's stages)
RERANK_MODES = {**{name[len("LRGD-"):]: keys for name, (model, keys) in VARIANTS.items() if model == "LRGD"},
                "lrgd": {"demo_mode": "lrgd"}}

METRICS = [("hit@1", "Hit@1"), ("hit@5", "Hit@5"), ("hit@10", "Hit@10"), ("ndcg@5", "NDCG@5"),
           ("ndcg@10", "NDCG@10"), ("mrr@10", "MRR@10"), ("effectd", "EffectD")]
CSV_TAIL = ["fit_time_s", "eval_time_s", "test_users", "candidates", "dataset", "config_hash"]
CSV_COLUMNS = ["variant", "model"] + [k for k, _ in METRICS] + CSV_TAIL
PLOT_METRICS = ["hit@10", "ndcg@10", "mrr@10"]
FULL_EVAL_ARGS = {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"}
FULL_METRICS = [("recall@10", "Recall@10"), ("ndcg@10", "NDCG@10"), ("mrr@10", "MRR@10"),
                ("target_in_top_n", "in top-N")]
OPTIONAL_COLUMNS = {"effectd", "target_in_top_n"}  # shown in the markdown table only where some row has a value


@dataclass(frozen=True)
class Protocol:
    """What a protocol sets for every row, and what its tables show."""

    config: Dict[str, Any]  # config keys of every row
    metrics: List[Tuple[str, str]]  # (row key, label): the table's metric columns
    plot: List[str]  # the row keys the bar chart shows
    models: List[str]  # the variants run when none are named
    full_ranking: bool  # re-ranking variants run, LRGD on sampled candidates does not


PROTOCOLS = {
    "sampled": Protocol({}, METRICS, PLOT_METRICS, list(VARIANTS), full_ranking=False),
    "full": Protocol({"eval_args": FULL_EVAL_ARGS, "metrics": ["Recall", "NDCG", "MRR"], "topk": [10]},
                     FULL_METRICS, ["recall@10", "ndcg@10", "mrr@10"],
                     ["Pop", "BPR", "SASRec", "BPR>alone", "BPR>LRGD-zero-shot", "SASRec>alone",
                      "SASRec>LRGD-zero-shot"], full_ranking=True),
}
# keys that change how a run looks or where it writes, not its numbers
VOLATILE_KEYS = {"show_progress", "state", "score_cache", "score_cache_dir", "checkpoint_dir", "log_wandb",
                 "wandb_project", "worker", "gpu_id"}


def _is_recbole_model(name: str) -> bool:
    from recbole.utils import get_model

    try:
        get_model(name)
    except (ValueError, AttributeError):  # AttributeError: a known module, a misspelt class ('bpr')
        return False
    return True


def _blend(name: str, text: str) -> float:
    try:
        blend = float(text)
    except ValueError:
        blend = math.nan
    if not 0 <= blend <= 1:  # nan too
        raise LRGDError(f"benchmark variant {name!r}: the blend after @ must be a number >= 0 and <= 1, not {text!r}")
    return blend


def resolve_variant(name: str) -> Tuple[str, Dict[str, Any]]:
    """(RecBole model, the variant's config keys) of a name of ``VARIANTS`` or of a re-ranking variant:
    ``<Retriever>>LRGD-<mode>[@<blend>]`` (LRGD in ``RERANK_MODES[mode]`` re-ranks the RecBole model's top
    ``rerank_top``, with ``rerank_blend`` <blend> where given) or ``<Retriever>>alone`` (``rerank_blend`` 1:
    the retriever's order, the user's history excluded, and no LLM scoring). A bad name is an ``LRGDError``."""
    if name in VARIANTS:
        return VARIANTS[name]
    retriever, sep, ranker = name.partition(">")
    if not sep:
        raise LRGDError(f"unknown benchmark variant {name!r}: use one of {', '.join(VARIANTS)}, or {RERANK_GRAMMAR}")
    if not _is_recbole_model(retriever):
        raise LRGDError(f"unknown benchmark variant {name!r}: {retriever!r} is not a RecBole model name "
                        f"(Pop, BPR, SASRec...) in {RERANK_GRAMMAR}")
    ranker, at, blend = ranker.partition("@")
    if ranker == ALONE:
        if at:
            raise LRGDError(f"benchmark variant {name!r}: {ALONE} is the retriever's own order (blend 1), "
                            "it takes no @")
        return "LRGD", {"candidate_source": retriever, "demo_mode": "none", "rerank_blend": 1.0}
    mode = ranker[len("LRGD-"):] if ranker.startswith("LRGD-") else None
    if mode not in RERANK_MODES:
        raise LRGDError(f"unknown benchmark variant {name!r}: {ranker!r} is neither {ALONE} nor LRGD-<mode> "
                        f"with <mode> one of {', '.join(RERANK_MODES)}")
    keys = {"candidate_source": retriever, **RERANK_MODES[mode]}
    if at:
        keys["rerank_blend"] = _blend(name, blend)
    return "LRGD", keys


def check_variant(name: str, protocol: str) -> None:
    """A variant the protocol can run: re-ranking ones rank the whole catalogue, plain LRGD ones sampled
    candidates (``LRGDError`` otherwise, as for a bad name)."""
    model, keys = resolve_variant(name)
    if "candidate_source" in keys and not PROTOCOLS[protocol].full_ranking:
        raise LRGDError(f"benchmark variant {name!r} re-ranks a full ranking: run it with --protocol=full")
    if model == "LRGD" and "candidate_source" not in keys and PROTOCOLS[protocol].full_ranking:
        raise LRGDError(f"benchmark variant {name!r} ranks sampled candidates: with --protocol=full give LRGD a "
                        f"retriever to re-rank, e.g. BPR>{name}")


def variant_config(name: str, config_dict: Dict[str, Any], config_files: Sequence[str],
                   effectd: bool = True) -> Tuple[str, Dict[str, Any]]:
    """(RecBole model, config_dict) of one variant: the shared config, then the variant's keys.
    LRGD variants with demonstrations also report EffectD unless the user's config sets metrics."""
    model, overrides = resolve_variant(name)
    cfg = {**config_dict, **overrides}
    if model == "LRGD":  # valid_users is for the baselines' early stopping; LRGD would LLM-score them all
        cfg["valid_users"] = None
        if "candidate_source" in overrides:  # its retriever stops early on the users its baseline row does
            cfg["retriever_valid_users"] = config_dict.get("valid_users")
    if effectd and model == "LRGD" and overrides.get("demo_mode") != "none" and not _sets_metrics(
            config_dict, config_files):
        cfg["metrics"] = ["Hit", "NDCG", "MRR", "EffectD"]
    return model, cfg


def _sets_metrics(config_dict: Dict[str, Any], config_files: Sequence[str]) -> bool:
    if "metrics" in config_dict:
        return True
    for path in config_files:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue  # run() reports a bad file as a one-line error
        if isinstance(loaded, dict) and "metrics" in loaded:
            return True
    return False


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return f"unreadable:{path}"


def config_hash(dataset: str, model: str, config_dict: Dict[str, Any], config_files: Sequence[str]) -> str:
    """A short hash of what decides a row's numbers: model, dataset, the final config keys given,
    the contents of the user's files, of the plugin's properties files and of ``candidates_file``."""
    from recbole_lrgd.quick_start import properties_files

    payload = {
        "dataset": dataset, "model": model,
        "config": {k: v for k, v in sorted(config_dict.items()) if k not in VOLATILE_KEYS},
        "files": [_file_digest(p) for p in config_files],
        "properties": [_file_digest(p) for p in properties_files(model, dataset)],
    }
    cands = config_dict.get("candidates_file")
    if cands:
        payload["candidates_file"] = _file_digest(cands)
    blob = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def candidates_digest(test_data) -> str:
    """A short hash of every evaluated user's candidate set (equal across rows = same candidates)."""
    sets = test_data.candidate_sets() if hasattr(test_data, "candidate_sets") else {}
    h = hashlib.sha256()
    for uid in sorted(sets):
        h.update(np.asarray([uid, *np.sort(sets[uid])], dtype=np.int64).tobytes())
    return h.hexdigest()[:8] if sets else ""


def _number(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def make_row(name: str, model: str, dataset: str, digest: str, result: Dict[str, Any],
             protocol: str = "sampled") -> Dict[str, Any]:
    """One table row; the JSON store also keeps per-user NDCG@10 (for paired bootstraps, as RecBole's
    evaluation computed it: ``result["test_per_user"]``), for LRGD's optimizer the seconds of each stage and,
    for a re-ranking, its ``rerank_top``."""
    values = {**result["test_result"], "target_in_top_n": result.get("target_in_top_n")}
    row = {"variant": name, "model": model}
    row.update({k: _number(values.get(k)) for k, _ in PROTOCOLS[protocol].metrics})
    row.update({"fit_time_s": round(float(result["fit_time"]), 2), "eval_time_s": round(float(result["eval_time"]), 2),
                "test_users": int(result["test_users"]), "candidates": candidates_digest(result["test_data"]),
                "dataset": dataset, "config_hash": digest})
    model_obj = result.get("model_obj")
    if result.get("target_in_top_n") is not None:
        row["rerank_top"] = int(model_obj.config["rerank_top"])
    if result.get("retriever_time") is not None:
        row["retriever_time_s"] = round(float(result["retriever_time"]), 2)
    state = getattr(model_obj, "demo_state", None)
    if state:
        seconds = state.get("seconds", {})
        stages = model_obj.config["lrgd_stages"]
        row.update({f"stage{k}_s": round(float(seconds[f'stage{k}']), 2) for k in range(1, stages + 1)
                    if f"stage{k}" in seconds})
    ndcg = (result.get("test_per_user") or {}).get("ndcg@10")
    if ndcg:
        row["per_user_ndcg10"] = {str(u): v for u, v in sorted(ndcg.items())}
    return row


def bootstrap_lines(rows: List[Dict[str, Any]], pairs: Sequence[Tuple[str, str]], seed: int = 0) -> List[str]:
    """'A vs B: NDCG@10 difference and its 95% paired bootstrap interval' for each pair present."""
    from recbole_lrgd.evaluator.per_user import paired_bootstrap

    found = {r["variant"]: r.get("per_user_ndcg10") for r in rows}
    lines = []
    for a, b in pairs:
        if found.get(a) and found.get(b):
            mean, lo, hi, p = paired_bootstrap({int(u): v for u, v in found[a].items()},
                                               {int(u): v for u, v in found[b].items()}, seed=seed)
            lines.append(f"{a} vs {b}: NDCG@10 difference {mean:+.4f}, 95% paired bootstrap CI "
                         f"[{lo:+.4f}, {hi:+.4f}] over {len(found[a])} users (share of resamples <= 0: {p:.3f})")
    return lines


BOOTSTRAP_PAIRS = [("LRGD-stage1+2", "LRGD-random"), ("LRGD-stage1", "LRGD-random"),
                   ("LRGD-stage1+2", "LRGD-zero-shot"), ("LRGD-stage1+2", "LRGD-stage1")]


def bootstrap_pairs(protocol: str, variants: Sequence[str]) -> List[Tuple[str, str]]:
    """The pairs a report compares: ``BOOTSTRAP_PAIRS`` when sampled; in the full protocol each re-ranking of
    a retriever against that retriever alone (``X>LRGD-...`` vs ``X>alone``)."""
    if not PROTOCOLS[protocol].full_ranking:
        return list(BOOTSTRAP_PAIRS)
    pairs = []
    for variant in variants:
        retriever, sep, ranker = variant.partition(">")
        if sep and ranker != ALONE:
            pairs.append((variant, f"{retriever}>{ALONE}"))
    return pairs


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


def _fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value + 0.0:.{digits}f}".replace("-0.0000", "0.0000")


def markdown_table(rows: List[Dict[str, Any]], protocol: str = "sampled") -> str:
    show = [(k, label) for k, label in PROTOCOLS[protocol].metrics
            if k not in OPTIONAL_COLUMNS or any(r.get(k) is not None for r in rows)]
    retriever = any(r.get("retriever_time_s") is not None for r in rows)
    head = ["Model"] + [label for _, label in show] + ["retriever s"] * retriever + ["fit s", "eval s", "users"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"]] + [_fmt(r.get(k)) for k, _ in show]
        cells += [_fmt(r.get("retriever_time_s"), 1)] * retriever
        cells += [_fmt(r["fit_time_s"], 1), _fmt(r["eval_time_s"], 1), str(r["test_users"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _full_ranking_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """What the full protocol's table rests on: the users (all rows' per-user NDCG@10 cover the same ones)
    and, with re-rankings, what ``X>alone`` and "in top-N" are."""
    users = [set(r.get("per_user_ndcg10") or ()) for r in rows]
    same = "the same users for every row" if all(u == users[0] for u in users) else "the users differ between rows"
    lines = [f"{', '.join(map(str, sorted({r['test_users'] for r in rows})))} test users, {same}, each ranking "
             "the whole catalogue (RecBole's full mode).", ""]
    tops = sorted({r["rerank_top"] for r in rows if r.get("rerank_top") is not None})
    if tops:
        lines += [f"`X>LRGD-...`: LRGD re-ranks retriever X's top {'/'.join(map(str, tops))} (the user's history "
                  "excluded); `X>alone` is X's own order over the same items (rerank_blend 1, no LLM), the "
                  "retriever-alone row. in top-N: the share of test users whose held-out item is in X's top N "
                  "(a re-ranking can only reorder those). retriever s: training X, or loading its cached "
                  "checkpoint; a row's wall time is retriever s + fit s + eval s.", ""]
    return lines


def markdown_report(dataset: str, rows: List[Dict[str, Any]], failed: Dict[str, str],
                    protocol: str = "sampled") -> str:
    out = [f"# Side-by-side benchmark: {dataset}", ""]
    digests = {r["candidates"] for r in rows}
    users = sorted({r["test_users"] for r in rows})
    if rows and PROTOCOLS[protocol].full_ranking:
        out += _full_ranking_lines(rows)
    elif rows:
        same = "the same candidate sets for every model" if len(digests) == 1 else \
            f"candidate sets differ between rows ({', '.join(sorted(digests))})"
        out += [f"{', '.join(map(str, users))} test users, {same}.", ""]
    out.append(markdown_table(rows, protocol))
    stages = [r for r in rows if r.get("stage1_s") is not None]
    if stages:
        out += ["", "Optimizer seconds (in fit): " + "; ".join(
            f"{r['variant']}: stage 1 {r['stage1_s']:.0f}" + (f", stage 2 {r['stage2_s']:.0f}" if r.get("stage2_s") is not None
                                                             else "") for r in stages)]
    boot = bootstrap_lines(rows, bootstrap_pairs(protocol, [r["variant"] for r in rows]))
    if boot:
        out += [""] + [f"- {line}" for line in boot]
    for name, msg in failed.items():
        out.append(f"\n{name}: failed: {msg}")
    return "\n".join(out) + "\n"


def csv_columns(protocol: str = "sampled") -> List[str]:
    """The CSV's columns: ``CSV_COLUMNS`` with the protocol's metric columns (and, ranking the whole catalogue,
    the retriever's seconds)."""
    spec = PROTOCOLS[protocol]
    return ["variant", "model"] + [k for k, _ in spec.metrics] + ["retriever_time_s"] * spec.full_ranking + CSV_TAIL


def csv_text(rows: List[Dict[str, Any]], protocol: str = "sampled") -> str:
    columns = csv_columns(protocol)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def bar_chart(rows: List[Dict[str, Any]], dataset: str, path: str, protocol: str = "sampled") -> None:
    """The rows' metrics as a PNG at ``path``; skipped with one warning line where matplotlib is not installed
    (an optional extra: the tables are written without it)."""
    try:
        import matplotlib
    except ImportError:
        print(f"warning: no {path}: the bar chart needs matplotlib (pip install matplotlib, or the plugin's "
              "[bench] extra)", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = PROTOCOLS[protocol]
    labels = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(spec.plot)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(rows)), 4.0))
    for k, metric in enumerate(spec.plot):
        values = [r.get(metric) or 0.0 for r in rows]
        ax.bar(x + (k - (len(spec.plot) - 1) / 2) * width, values, width, label=dict(spec.metrics)[metric])
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    top = max([r.get(m) or 0.0 for r in rows for m in spec.plot] + [0.01])
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("score")
    if spec.full_ranking:
        same = "full ranking"
    else:
        same = "same candidates" if len({r["candidates"] for r in rows}) == 1 else "candidates differ"
    ax.set_title(f"{dataset}: {', '.join(str(u) for u in sorted({r['test_users'] for r in rows}))} test users, {same}")
    ax.legend(loc="upper center", ncol=len(spec.plot), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_whole(path, buf.getvalue())


def run_benchmark(dataset: str, models: Optional[Sequence[str]] = None, config_dict: Optional[Dict[str, Any]] = None,
                  config_files: Optional[Sequence[str]] = None, out_dir: str = "benchmarks/out",
                  name: Optional[str] = None, effectd: bool = True, plot: bool = True,
                  progress: bool = True, protocol: str = "sampled") -> Dict[str, Any]:
    """Run (or reuse) one row per variant; write .json (finished rows), .md, .csv and .png.

    ``protocol`` ``full`` gives every row the full-ranking keys of ``PROTOCOLS["full"]`` (a config_dict
    that sets one of them otherwise is an error) and writes ``compare_<dataset>_full.*`` by default.
    Returns ``rows`` (in the order asked), ``ran`` and ``reused`` (variant names), ``failed``
    (variant -> one-line error; a failed variant is not stored, so the next run retries it) and
    ``paths``."""
    from tqdm import tqdm

    from recbole_lrgd.quick_start import run

    if protocol not in PROTOCOLS:
        raise LRGDError(f"unknown benchmark protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    spec = PROTOCOLS[protocol]
    models = list(models or spec.models)
    for variant in models:
        check_variant(variant, protocol)
    config_dict, config_files = dict(config_dict or {}), list(config_files or [])
    clash = sorted(k for k, v in spec.config.items() if k in config_dict and config_dict[k] != v)
    if clash:
        raise LRGDError(f"--protocol={protocol} sets {', '.join(clash)} for every row: leave "
                        f"{', '.join('--' + k for k in clash)} out")
    config_dict.update(spec.config)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name or f"compare_{dataset}" + ("" if protocol == "sampled" else f"_{protocol}"))
    paths = {ext: f"{stem}.{ext}" for ext in ("json", "md", "csv", "png")}
    store = load_rows(paths["json"])
    rows, ran, reused, failed = [], [], [], {}

    def write_outputs() -> None:
        write_whole(paths["json"], json.dumps({"rows": list(store.values())}, indent=1, sort_keys=True))
        write_whole(paths["md"], markdown_report(dataset, rows, failed, protocol))
        write_whole(paths["csv"], csv_text(rows, protocol))

    bar = tqdm(models, desc=f"benchmark {dataset}", unit="model", disable=not progress)
    for variant in bar:
        bar.set_postfix_str(variant)
        model, cfg = variant_config(variant, config_dict, config_files, effectd)
        digest = config_hash(dataset, model, cfg, config_files)
        key = row_key(dataset, variant, digest)
        if key in store:
            rows.append(store[key])
            reused.append(variant)
            bar.write(f"{variant}: finished earlier, reused")
            continue
        try:
            result = run(model, dataset, config_file_list=config_files or None, config_dict=cfg,
                         saved=True)  # LRGD: the optimizer state is kept, so stage 1+2 resumes stage 1
        except Exception as exc:  # one failing model (an LRGDError or a crash) must not stop the others
            failed[variant] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            bar.write(f"{variant}: failed: {failed[variant]}")
            continue
        row = make_row(variant, model, dataset, digest, result, protocol)
        del result
        store[key] = row
        rows.append(row)
        ran.append(variant)
        write_outputs()  # after every model: an interruption loses at most the model in progress
    bar.close()
    write_outputs()
    if plot and rows:
        bar_chart(rows, dataset, paths["png"], protocol)
    return {"rows": rows, "ran": ran, "reused": reused, "failed": failed, "paths": paths,
            "table": markdown_table(rows, protocol),
            "bootstrap": bootstrap_lines(rows, bootstrap_pairs(protocol, [r["variant"] for r in rows]))}


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False,
                                     epilog="Every other --key=value is a config key (RecBole's or the plugin's: "
                                            "`recbole-lrgd --help` lists the plugin's) passed through to each model; "
                                            "a variant's own keys (--list) win over it.")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="RecBole dataset name")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="sampled",
                        help="sampled: sampled candidates (eval_args); full: every row ranks the whole catalogue "
                             "(Recall/NDCG/MRR@10), for the re-ranking variants")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated variants (quote the > from the shell): {', '.join(VARIANTS)}, or "
                             f"with --protocol=full {RERANK_GRAMMAR}, <mode> one of {', '.join(RERANK_MODES)} "
                             "(default: every variant above; with --protocol=full "
                             f"{','.join(PROTOCOLS['full'].models)})")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files (shared by every model)")
    parser.add_argument("--out", default="benchmarks/out", help="folder of the .md, .csv, .png and .json files")
    parser.add_argument("--name", default=None, help="file stem (default compare_<dataset>)")
    parser.add_argument("--no_effectd", action="store_true", help="do not add EffectD to LRGD's metrics")
    parser.add_argument("--no_plot", action="store_true", help="skip the PNG")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args, extra = parser.parse_known_args(argv)
    if args.list:
        for variant, (model, overrides) in VARIANTS.items():
            print(f"{variant:16s} {model:9s} {overrides}")
        print(f"--protocol=full: {RERANK_GRAMMAR}, e.g. BPR>LRGD-zero-shot, SASRec>LRGD-nearest@0.5, BPR>alone; "
              f"<mode> one of {', '.join(RERANK_MODES)}")
        return 0
    config_dict: Dict[str, Any] = {}
    for item in extra:  # every other --key=value is a RecBole config key, shared by all models
        if not item.startswith("--") or "=" not in item:
            print(f"error: unexpected argument {item!r} (config keys are --key=value)", file=sys.stderr)
            return 2
        key, value = item[2:].split("=", 1)
        config_dict[key] = _parse_value(value)

    quiet_libraries()
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    files = args.config_files.strip().split(" ") if args.config_files else []
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv, whose keys would beat each variant's own
    try:
        result = run_benchmark(args.dataset, models, config_dict, files, args.out, args.name,
                               effectd=not args.no_effectd, plot=not args.no_plot, protocol=args.protocol)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved_argv
    print(result["table"])
    for line in result["bootstrap"]:
        print(line)
    for variant, msg in result["failed"].items():
        print(f"{variant}: failed: {msg}", file=sys.stderr)
    print("wrote " + ", ".join(p for p in result["paths"].values() if os.path.exists(p)))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

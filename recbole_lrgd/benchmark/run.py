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
import ast
import os
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

import yaml
from tqdm import tqdm

from recbole_lrgd import quick_start
from recbole_lrgd.argv import command_line, key_values
from recbole_lrgd.benchmark.report import (bar_chart, bootstrap_lines, bootstrap_pairs, csv_text, markdown_report,
                                           markdown_table)
from recbole_lrgd.benchmark.store import config_hash, load_rows, make_row, row_key, save_rows, save_slices
from recbole_lrgd.benchmark.variants import (FUSION_GRAMMAR, PROTOCOLS, RECOMMENDED, RERANK_GRAMMAR, RERANK_MODES,
                                             VARIANTS, check_variant, variant_config)
from recbole_lrgd.config import build_config
from recbole_lrgd.console import quiet_libraries
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.validate import check_writable_folder
from recbole_lrgd.whole_file import write_whole


def run_benchmark(dataset: str, models: Optional[Sequence[str]] = None, config_dict: Optional[Dict[str, Any]] = None,
                  config_files: Optional[Sequence[str]] = None, out_dir: str = "benchmarks/out",
                  name: Optional[str] = None, effectd: bool = True, plot: bool = True,
                  progress: bool = True, protocol: str = "sampled", pairs: Sequence[Tuple[str, str]] = ()
                  ) -> Dict[str, Any]:
    """Run (or reuse) one row per variant; write .json (finished rows), .md, .csv and .png.

    ``pairs`` (variant A, variant B): the report's paired bootstrap intervals of A - B besides its own pairs.
    With the config key ``slices`` the report adds per-slice tables of the test users (``evaluator/slices.py``),
    and ``<name>.slices.json`` keeps each user's slices.

    ``protocol`` ``full`` gives every row the full-ranking keys of ``PROTOCOLS["full"]`` (a config_dict
    that sets one of them otherwise is an error) and writes ``compare_<dataset>_full.*`` by default.
    Returns ``rows`` (in the order asked), ``ran`` and ``reused`` (variant names), ``failed``
    (variant -> one-line error; a failed variant is not stored, so the next run retries it) and
    ``paths``."""
    if protocol not in PROTOCOLS:
        raise LRGDError(f"unknown benchmark protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    spec = PROTOCOLS[protocol]
    models = list(models or spec.models)
    for variant in models:
        check_variant(variant, protocol)
    for pair in pairs:
        if any(v not in models for v in pair):
            raise LRGDError(f"--pairs {pair[0]}:{pair[1]} names a variant the benchmark does not run "
                            f"(its models: {', '.join(models)})")
        if pair[0] == pair[1]:
            raise LRGDError(f"--pairs {pair[0]}:{pair[1]} compares a variant with itself: name two variants")
    config_dict, config_files = dict(config_dict or {}), list(config_files or [])
    clash = sorted(k for k, v in spec.config.items() if k in config_dict and config_dict[k] != v)
    if clash:
        raise LRGDError(f"--protocol={protocol} sets {', '.join(clash)} for every row: leave "
                        f"{', '.join('--' + k for k in clash)} out")
    config_dict.update(spec.config)
    if name is not None and (not name or os.path.basename(name) != name):
        raise LRGDError(f"--name {name!r} must be a file stem, with no folder (--out names the folder)")
    check_writable_folder(out_dir, "--out")
    # what every row shares (config files, dataset, keys) is checked once, before a row runs or a file is written
    first_model, first_config = variant_config(models[0], config_dict, config_files, effectd)
    build_config(first_model, dataset, config_files or None, first_config, warn_unknown=False)
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name or f"compare_{dataset}" + ("" if protocol == "sampled" else f"_{protocol}"))
    paths = {ext: f"{stem}.{ext}" for ext in ("json", "md", "csv", "png", "slices.json")}
    slices = None
    if config_dict.get("slices"):  # the same users and split for every row: read from the data once
        slices = quick_start.dataset_slices(dataset, config_files or None, config_dict)
        save_slices(paths["slices.json"], slices)
    store = load_rows(paths["json"])
    rows, ran, reused, failed = [], [], [], {}

    def write_outputs() -> None:
        save_rows(paths["json"], store)
        write_whole(paths["md"], markdown_report(dataset, rows, failed, protocol, pairs, slices))
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
            result = quick_start.run(model, dataset, config_file_list=config_files or None, config_dict=cfg,
                                     saved=True)  # LRGD: the optimizer state is kept, so stage 1+2 resumes stage 1
        except Exception as exc:  # one failing model (an LRGDError or a crash) must not stop the others
            failed[variant] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            bar.write(f"{variant}: failed: {failed[variant]}")
            continue
        row = make_row(variant, model, dataset, digest, result, protocol)
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
            "bootstrap": bootstrap_lines(rows, [*bootstrap_pairs(protocol, [r["variant"] for r in rows]), *pairs])}


def parse_value(text: str) -> Any:
    """A ``--key=value``'s value as a run's command line gives it to RecBole, which reads a Python literal where
    the text is one (``1e-3``, ``None``), and here YAML's words otherwise (``~``, ``true``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
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
                             f"(default: every variant above and {RECOMMENDED}; with --protocol=full "
                             f"{','.join(PROTOCOLS['full'].models)})")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files (shared by every model)")
    parser.add_argument("--out", default="benchmarks/out", help="folder of the .md, .csv, .png and .json files")
    parser.add_argument("--name", default=None, help="file stem (default compare_<dataset>)")
    parser.add_argument("--no_effectd", action="store_true", help="do not add EffectD to LRGD's metrics")
    parser.add_argument("--no_plot", action="store_true", help="skip the PNG")
    parser.add_argument("--pairs", default="",
                        help="comma-separated A:B pairs of variants, e.g. LRGD-nearest:Pop,BPR+LRGD-nearest:BPR: a "
                             "95%% paired bootstrap interval of A - B (NDCG@10), overall and with --slices=True per slice")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args, extra = parser.parse_known_args(argv)
    if args.list:
        for variant, (model, overrides) in VARIANTS.items():
            print(f"{variant:16s} {model:9s} {overrides}")
        print(f"--protocol=full: {RERANK_GRAMMAR}, e.g. BPR>LRGD-zero-shot, SASRec>LRGD-nearest@0.5, BPR>alone; "
              f"<mode> one of {', '.join(RERANK_MODES)}")
        print(f"sampled: {FUSION_GRAMMAR}, e.g. BPR+LRGD-nearest, Pop+LRGD-zero-shot@0.5")
        return 0
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    if args.models is not None and not models:
        print("error: --models names no variant: give them comma-separated, or leave --models out for the "
              "default ones", file=sys.stderr)
        return 2
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        print(f"error: --pairs takes A:B pairs separated by commas, not {args.pairs!r}", file=sys.stderr)
        return 2
    try:  # every other --key=value is a config key, shared by all models
        config_dict: Dict[str, Any] = {key: parse_value(value) for key, value in key_values(extra).items()}
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    quiet_libraries()
    files = args.config_files.strip().split(" ") if args.config_files else []
    try:
        with command_line([]):  # the command line's keys would beat each variant's own
            result = run_benchmark(args.dataset, models, config_dict, files, args.out, args.name,
                                   effectd=not args.no_effectd, plot=not args.no_plot, protocol=args.protocol,
                                   pairs=pairs)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    for line in result["bootstrap"]:
        print(line)
    for variant, msg in result["failed"].items():
        print(f"{variant}: failed: {msg}", file=sys.stderr)
    print("wrote " + ", ".join(p for p in result["paths"].values() if os.path.exists(p)))
    return 1 if result["failed"] else 0

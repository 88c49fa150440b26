"""The command line: run LRGD or any RecBole model on one dataset, one split, one candidate set.

    recbole-lrgd                                                 # LRGD on ml-100k, default LLM
    recbole-lrgd --model=SASRec                                  # a RecBole baseline, same protocol
    recbole-lrgd --dataset=amazon-beauty --data_path=../shared/data --demo_mode=nearest
    accelerate launch --multi_gpu --num_processes 2 -m recbole_lrgd.cli --result_file=r.json  # docs/distributed.md
    recbole-lrgd --benchmark --models=LRGD-zero-shot,Pop,SASRec  # side-by-side table, CSV, PNG

``recbole-lrgd`` is the installed console script; ``python run_recbole_lrgd.py`` in a checkout and
``python -m recbole_lrgd.cli`` are the same command. Any other ``--key=value`` is a RecBole config key
(RecBole reads them from the command line). Under a launcher only rank 0 prints and writes ``--result_file``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, List, Optional

from recbole_lrgd.argv import command_line, recbole_arguments
from recbole_lrgd.console import quiet_libraries
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.keys import help_text

if TYPE_CHECKING:  # the run's modules load torch: imported where a run starts, not for --help
    from recbole_lrgd.results import RunResult

PASS_THROUGH = ("Every other --key=value is a RecBole config key (RecBole's own, or any of the above), "
                "as with run_recbole; --key=~ means ~ (None).")


def main(argv: Optional[List[str]] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--benchmark" in args_list:  # side-by-side table of LRGD variants and baselines: recbole_lrgd/benchmark/
        from recbole_lrgd.benchmark.run import main as benchmark_main
        return benchmark_main([a for a in args_list if a != "--benchmark"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False, epilog=help_text() + "\n" + PASS_THROUGH)
    parser.add_argument("--model", "-m", default="LRGD", help="LRGD or a RecBole model name")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="RecBole dataset name")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--result_file", default=None, help="write the metrics and chosen demonstrations as JSON")
    parser.add_argument("--benchmark", action="store_true",
                        help="side-by-side table of models instead of one run (see --benchmark --help)")
    args, rest = parser.parse_known_args(args_list)

    from recbole_lrgd import distributed as dist
    from recbole_lrgd.quick_start import run

    quiet_libraries()

    try:
        recbole_args = recbole_arguments(rest)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = args.config_files.strip().split(" ") if args.config_files else None
    result, failed = None, False
    try:
        # None without an error: a rank other than 0 under a launcher, whose share of a RecBole baseline is nothing
        # (rank 0 runs it alone); it leaves with 0, since a launcher stops every rank once one fails
        with command_line(recbole_args):
            result = run(model=args.model, dataset=args.dataset, config_file_list=files)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed = True
    finally:
        dist.shutdown()  # every collective is done once run() returns
    if result is not None and dist.is_main():
        report(args.result_file, result)
    return dist.leave(2 if failed else 0)


def report(result_file: Optional[str], result: RunResult) -> None:
    """Rank 0's output: the JSON file (if asked for) and the metrics line."""
    if result_file:
        write_result(result_file, result)
    metrics = "  ".join(f"{k}: {v:.4f}" for k, v in result.test_result.items())
    print(f"{result.model} on {result.dataset} ({result.test_users} test users, "
          f"fit {result.fit_time:.1f}s, test {result.eval_time:.1f}s)")
    print(f"test result: {metrics}")


def write_result(path: str, result: RunResult) -> None:
    """The run's metrics, timings and demonstrations (global set, if any) as JSON."""
    from recbole_lrgd import distributed as dist

    out = {k: getattr(result, k) for k in ("model", "dataset", "test_result", "best_valid_result", "best_valid_score",
                                           "fit_time", "eval_time", "test_users")}
    out["best_valid_result"] = dict(out["best_valid_result"] or {})
    out["global_demo_users"] = [int(u) for u in result.global_demo_users]
    out["world_size"] = dist.world()[1]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    sys.exit(main())

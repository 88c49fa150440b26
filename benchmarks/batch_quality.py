"""How much ``user_batch_size`` moves the metrics in bfloat16: same users, candidates and prompts.

    OMP_NUM_THREADS=1 python benchmarks/batch_quality.py --dataset=ml-100k --users=500

Rows of different prompt lengths share a forward pass right-padded to the longest, and a bfloat16 matmul's
sums depend on the shapes it runs at, so one user's scores differ slightly with the rows beside it. This
scores the same test users with the default settings (per-user nearest demonstrations, the default LLM,
bfloat16, score cache off) at several batch sizes and compares each with batch 1: Spearman of the scores,
the share of users whose target keeps its rank, and NDCG@10's difference with its paired bootstrap 95% CI.

Per-user scores go to ``dtype_quality``'s resumable stores (benchmarks/out/dtype_quality/<dataset>-batch<B>-
<settings hash>.npz), the summary to benchmarks/out/batch_quality.md.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dtype_quality import compare, score_dataset, store_path, write_summary  # noqa: E402
from recbole_lrgd.argv import run_script  # noqa: E402  (dtype_quality put the repository on the path)

BATCHES = (1, 8, 32)


def settings_for(dataset: str, batch: Union[int, str], users: int, data_path: str) -> dict:
    """Every setting that changes a score is spelled out, so the store's key names them all."""
    cfg = {"llm_dtype": "bfloat16", "eval_users": users, "score_cache": False, "show_progress": False,
           "state": "WARNING", "use_gpu": False, "demo_mode": "nearest", "num_demos": 4, "user_batch_size": batch}
    if data_path and os.path.isdir(os.path.join(data_path, dataset)):
        cfg["data_path"] = os.path.abspath(data_path)  # the store's key names the folder, however it was written
    return cfg


def report(rows: List[dict], command: str) -> str:
    lines = ["# user_batch_size in bfloat16: ranking quality", "", f"`{command}`", "",
             "Same users, candidates and prompts (per-user nearest demonstrations, K = 4, the default LLM, "
             "bfloat16, score cache off), scored at each batch size and compared with batch 1. Spearman: "
             "per-candidate scores, pooled over all users' candidates and the median of per-user correlations. "
             "Diff: NDCG@10(B) - NDCG@10(batch 1), paired bootstrap 95% interval over users (10,000 resamples).",
             "", "| dataset | batch B | users | Spearman pooled | Spearman per-user median | same target rank | "
             "NDCG@10 batch 1 | NDCG@10 B | diff | 95% CI | scoring s 1 / B |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['new']} | {r['users']} | {r['spearman_pooled']:.4f} | "
                     f"{r['spearman_user_median']:.4f} | {r['same_target_rank']:.1%} | {r['ndcg10_base']:.4f} | "
                     f"{r['ndcg10_new']:.4f} | {r['ndcg10_diff']:+.4f} | [{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}] | "
                     f"{r['seconds_base']:.0f} / {r['seconds_new']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="the first is the reference")
    parser.add_argument("--data_path", default="../shared/data")
    args = parser.parse_args(argv)
    batches = [b if b == "auto" else int(b) for b in args.batches.split(",")]
    stores: Dict[Union[int, str], dict] = {}
    seconds: Dict[Union[int, str], float] = {}
    for batch in batches:
        cfg = settings_for(args.dataset, batch, args.users, args.data_path)
        stores[batch] = score_dataset(args.dataset, f"batch{batch}", cfg)
        seconds[batch] = float(np.load(store_path(args.dataset, f"batch{batch}", cfg))["seconds"])
    rows = [compare(args.dataset, stores, seconds, batch, batches[0]) for batch in batches[1:]]
    write_summary("batch_quality", args, rows, report)
    return 0


if __name__ == "__main__":
    run_script(main)

"""The same model and prompts on a GPU and on this CPU: users/s there, and how far its scores and NDCG@10 are from
the CPU's (both bf16, user_batch_size auto).

    python benchmarks/gpu_equality.py --prompts .gpu --device cpu --save .gpu/cpu_scores.json        # here
    python benchmarks/gpu_equality.py --prompts .gpu --device cuda --reference .gpu/cpu_scores.json  # on the GPU

The prompts are throughput.py's (--save_prompts): all 943 ml-100k test users, zero-shot and nearest K = 4. The
model is --llm (a path load_llm takes) or, where the real weights cannot travel, the SmolLM2 shape with seeded
random weights built on the CPU in bf16 and moved to the device, so both devices hold the same weights. NDCG@10 of a
user: 1 / log2(rank + 2) of its target among its candidates (rank: candidates scored above it), 0 past 10.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_lrgd.evaluator.per_user import paired_bootstrap  # noqa: E402
from recbole_lrgd.llm.batching import make_batching  # noqa: E402
from recbole_lrgd.llm.scorer import LLMScorer  # noqa: E402
from shapes import random_model  # noqa: E402
from throughput import load_prompts  # noqa: E402


def ndcg10(scores: List[float], target: int) -> float:
    rank = int(np.sum(np.asarray(scores) > scores[target]))
    return 1.0 / np.log2(rank + 2) if rank < 10 else 0.0


def score_all(model, tokenizer, prompts, targets) -> Dict[str, object]:
    """Every user's scores at user_batch_size auto, a chunk at a time, with the seconds it took."""
    scorer = LLMScorer(model, tokenizer, "likelihood", 20, batching=make_batching("auto", model), score_cache=None,
                       model_id="", title_score="mean", title_score_tokens=None)
    scores: List[List[float]] = []
    start = time.perf_counter()
    for at in range(0, len(prompts), scorer.chunk_users):
        scores += [s.tolist() for s in scorer.score_many(prompts[at: at + scorer.chunk_users])]
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "users_per_s": len(prompts) / seconds, "batching": str(scorer.batching),
            "scores": scores, "ndcg10": [ndcg10(s, t) for s, t in zip(scores, targets)]}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's correlation (ties get their average rank), in numpy alone: the GPU image may lack scipy."""
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.empty(len(v))
        order[np.argsort(v, kind="mergesort")] = np.arange(len(v))
        _, tie, counts = np.unique(v, return_inverse=True, return_counts=True)
        return (np.bincount(tie, order) / counts)[tie]
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def compare(mode: str, here: dict, there: dict) -> str:
    """One line: NDCG@10 on each device, the paired difference with its bootstrap interval, the pooled Spearman of
    the scores, the largest score difference and the users whose target keeps its rank."""
    a, b = dict(enumerate(here["ndcg10"])), dict(enumerate(there["ndcg10"]))
    diff, lo, hi, _ = paired_bootstrap(a, b)
    x, y = np.array(here["scores"]), np.array(there["scores"])
    same = float(np.mean(np.array(here["ndcg10"]) == np.array(there["ndcg10"])))
    return (f"| {mode} | {len(x)} | {np.mean(here['ndcg10']):.4f} | {np.mean(there['ndcg10']):.4f} | {diff:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}] | {spearman(x.ravel(), y.ravel()):.4f} | {np.abs(x - y).max():.3f} | "
            f"{same:.1%} | {here['users_per_s']:.1f} | {there['users_per_s']:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--llm", default="", help="a model path (default: the seeded random SmolLM2 shape)")
    parser.add_argument("--save", default="", help="write the scores here (the CPU's reference)")
    parser.add_argument("--reference", default="", help="the CPU's scores to compare with")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args()
    prompts, targets, tokenizer = load_prompts(args.prompts)
    if args.llm:
        from recbole_lrgd.llm.loader import load_llm

        model, _ = load_llm(args.llm, device=args.device, dtype="bfloat16")
    else:
        model = random_model("smollm2-135m", "bfloat16", "cpu").to(args.device)
    runs = {mode: score_all(model, tokenizer, rows, targets) for mode, rows in prompts.items()}
    for mode, run in runs.items():
        print(f"{mode}: {len(targets)} users in {run['seconds']:.1f} s, {run['users_per_s']:.1f} users/s "
              f"({run['batching']}), NDCG@10 {np.mean(run['ndcg10']):.4f}", flush=True)
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump({"model": args.llm or "random smollm2-135m shape, seed 0", "runs": runs}, f)
    if args.reference:
        with open(args.reference, encoding="utf-8") as f:
            cpu = json.load(f)["runs"]
        lines = [f"# {args.device} against the CPU: {args.llm or 'random SmolLM2 shape (seed 0)'}, bf16, auto batches",
                 "", f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}; torch {torch.__version__}", "",
                 "| mode | users | NDCG@10 device | NDCG@10 CPU | device - CPU [95% CI] | Spearman of scores | "
                 "max abs score diff | same NDCG | users/s device | users/s CPU |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [compare(mode, runs[mode], cpu[mode]) for mode in runs]
        print("\n".join(lines))
        with open(os.path.join(args.out, f"equality_{args.device}.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

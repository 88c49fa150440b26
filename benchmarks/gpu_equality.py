"""The same model and prompts on a GPU and on this CPU: users/s there at its own auto batches, and how far its scores
and NDCG@10 are from the CPU's under the CPU's own batches (bf16 both; the same batches, so the device alone differs).

    python benchmarks/gpu_equality.py --prompts .gpu --device cpu --save .gpu/cpu_scores.json        # here
    python benchmarks/gpu_equality.py --prompts .gpu --device cuda --reference .gpu/cpu_scores.json  # on the GPU

The prompts are throughput.py's (--save_prompts): all 943 ml-100k test users, zero-shot and nearest K = 4. The
model is --llm (a path load_llm takes) or, where the real weights cannot travel, the SmolLM2 shape with weights drawn
from a seeded generator on the CPU (``seeded``) and moved to the device; the reference keeps their checksum, and a
device whose weights differ says so in one line and stops. NDCG@10 of a
user: 1 / log2(rank + 2) of its target among its candidates (rank: candidates scored above it), 0 past 10.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any, Dict, List

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_lrgd.evaluator.per_user import ndcg_of_rank, paired_bootstrap  # noqa: E402
from recbole_lrgd.llm.batching import Batching, TokenBudget, make_batching  # noqa: E402
from recbole_lrgd.llm.prompt import Prompt  # noqa: E402
from shapes import random_model  # noqa: E402
from throughput import likelihood_scorer, load_prompts  # noqa: E402


def ndcg10(scores: List[float], target: int) -> float:
    """NDCG@10 of the target among ``scores``: its rank is the number of candidates scored above it."""
    return ndcg_of_rank(int(np.sum(np.asarray(scores) > scores[target])))


def seeded(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with every parameter drawn again, in name order, from a seeded CPU generator (norm weights 1,
    matrices N(0, 0.02)): the same weights on both machines whatever transformers' own initialisation does."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            drawn = torch.ones(param.shape) if param.ndim == 1 else torch.randn(param.shape, generator=generator) * 0.02
            param.copy_(drawn.to(param.dtype))
    return model


def checksum(model: torch.nn.Module) -> float:
    """The weights' sum in float64: equal on both machines when the weights are."""
    return float(sum(param.double().sum().item() for param in model.parameters()))


def score_all(model: torch.nn.Module, tokenizer: Any, prompts: List[Prompt], targets: List[int], batching: Batching
              ) -> Dict[str, object]:
    """Every user's scores under ``batching``, a chunk at a time, with the seconds it took."""
    scorer = likelihood_scorer(model, tokenizer, batching)
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
        model = seeded(random_model("smollm2-135m", "bfloat16", "cpu")).to(args.device)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, weights' checksum {checksum(model)!r}",
          flush=True)
    auto = make_batching("auto", model)
    runs = {mode: score_all(model, tokenizer, rows, targets, auto) for mode, rows in prompts.items()}
    for mode, run in runs.items():
        print(f"{mode}: {len(targets)} users in {run['seconds']:.1f} s, {run['users_per_s']:.1f} users/s "
              f"({run['batching']}), NDCG@10 {np.mean(run['ndcg10']):.4f}", flush=True)
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump({"model": args.llm or "random smollm2-135m shape, seeded (gpu_equality.seeded)",
                       "checksum": checksum(model), "batching": asdict(auto), "runs": runs}, f)
    if args.reference:
        return against_reference(args, model, tokenizer, prompts, targets, runs)
    return 0


def against_reference(args: argparse.Namespace, model: torch.nn.Module, tokenizer: Any,
                      prompts: Dict[str, List[Prompt]], targets: List[int], runs: Dict[str, Dict[str, object]]) -> int:
    """The CPU's scores against this device's under the CPU's own batches (the device's difference alone), and
    users/s at this device's auto; one error line when the weights differ."""
    with open(args.reference, encoding="utf-8") as f:
        cpu = json.load(f)
    if cpu.get("checksum") != checksum(model):
        print(f"error: the weights differ from the reference's (checksum {checksum(model)!r} here, "
              f"{cpu.get('checksum')!r} there): rebuild {args.reference} with this code")
        return 2
    same_plan = TokenBudget(**cpu["batching"])
    device_runs = {mode: score_all(model, tokenizer, rows, targets, same_plan) for mode, rows in prompts.items()}
    lines = [f"# {args.device} against the CPU: {args.llm or 'random SmolLM2 shape (seeded)'}, bf16, the CPU's batches",
             "", f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}; torch {torch.__version__}, "
             f"transformers {transformers.__version__}; users/s on the device at its own auto: "
             + ", ".join(f"{mode} {run['users_per_s']:.1f} ({run['batching']})" for mode, run in runs.items()), "",
             "| mode | users | NDCG@10 device | NDCG@10 CPU | device - CPU [95% CI] | Spearman of scores | "
             "max abs score diff | same NDCG | users/s device | users/s CPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [compare(mode, device_runs[mode], cpu["runs"][mode]) for mode in device_runs]
    print("\n".join(lines))
    with open(os.path.join(args.out, f"equality_{args.device}.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())

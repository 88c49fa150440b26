"""How close does scoring come to the device's limit at 135M, 1.5B and 8B shapes, and at which batch?

    python benchmarks/throughput.py                                   # a CPU: the SmolLM2 shape, 32 users a row
    python benchmarks/throughput.py --save_prompts .gpu               # all 943 users' prompts, for a bare machine
    python benchmarks/throughput.py --device cuda --prompts .gpu      # a GPU: the three shapes, 943 users a row

Random-weight models of the real models' shapes (benchmarks/shapes.py; speed does not depend on the weights) run
the real scorer (likelihood, 20 candidates a user, score cache off) on real prompts: ml-100k's test users, their
titles through the default tokenizer, zero-shot and with their nearest K = 4 demonstrations. Every row scores the
users a chunk at a time, as a run does (``chunk_users``), after one untimed user (kernel warm-up and the
instruction's kept prefix), and stops after the chunk that passes --seconds. Per row:

  users/s        users scored / seconds
  tokens/s       the prompts' tokens (prefix, user part and every candidate's tokens) / seconds
  TFLOP/s        matmul FLOPs the model ran / seconds: 2 x non-embedding parameters per real (unpadded) token
                 plus 2 x hidden x vocabulary per logit row of the LM head; attention's scores are left out, so
                 this is a lower bound
  % peak         that over the best bf16 torch.matmul FLOP/s of this device (an 8192^3 product on a GPU, 2048^3
                 on a CPU), measured in the same run
  peak MB        peak device memory during the row (a GPU's allocator; a CPU's peak RSS, reset per row)
  pads           the share of the token positions run that were padding

The table goes to benchmarks/out/throughput_<device>.md (and .json), with the device, torch and transformers.
--profile adds one profiled chunk (64 users at most) per shape and mode at the auto batch: where its time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flops import matmul_flops, non_embedding_params  # noqa: E402
from recbole_lrgd.argv import run_script  # noqa: E402
from recbole_lrgd.llm.batching import Batching, make_batching  # noqa: E402
from recbole_lrgd.llm.prompt import Prompt, encode_parts  # noqa: E402
from recbole_lrgd.llm.scorer import LLMScorer  # noqa: E402
from shapes import SHAPES, random_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("zero-shot", "nearest")
BATCHES = ("1", "8", "32", "128", "auto")
PEAK_N = {"cpu": 2048, "cuda": 8192}
PROFILE_USERS = 64


def ml100k_prompts(users: Optional[int]) -> Tuple[Dict[str, List[Prompt]], List[int], object]:
    """Zero-shot and nearest K = 4 prompts of ml-100k's test users (all with ``users`` None), as LRGD builds them,
    each user's target (its index among the prompt's candidates) and the default LLM's tokenizer."""
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_lrgd.config import build_config
    from recbole_lrgd.data.chunks import user_rows
    from recbole_lrgd.data.demonstrations import DemoChoice
    from recbole_lrgd.data.loaders import prepare_data
    from recbole_lrgd.model import LRGD
    from scoring_speed import user_prompts

    config = build_config("LRGD", "ml-100k", config_dict={
        "eval_users": users, "num_demos": 4, "score_cache": False, "show_progress": False, "state": "WARNING",
        "use_gpu": False})
    init_seed(config["seed"], config["reproducibility"])
    train, _, test = prepare_data(config, create_dataset(config))
    model = LRGD(config, train._dataset)
    ranker = model.ranker
    eval_users, targets = [], []
    for inter, _, positive_u, positive_i in test:
        seqs, lens, items = inter["item_id_list"].numpy(), inter["item_length"].numpy(), inter["item_id"].numpy()
        for k, (user, rows) in enumerate(user_rows(inter["user_id"].numpy())):
            eval_users.append((user, seqs[rows[0], : lens[rows[0]]], items[rows]))
            targets.append(list(items[rows]).index(int(positive_i[positive_u == k][0])))
    nearest = DemoChoice.for_mode("nearest", ranker.pool, ranker.demos.num_demos, ranker.demos.seed)
    prompts = {"zero-shot": user_prompts(model, eval_users, DemoChoice()),
               "nearest": user_prompts(model, eval_users, nearest)}
    return prompts, targets, ranker.scorer.tokenizer


def save_prompts(folder: str, users: Optional[int]) -> None:
    """``ml100k_prompts`` into ``folder``: prompts.pkl and the tokenizer, for a machine without RecBole or the
    default LLM's weights (the GPU run: benchmarks/gpu_scale.sh)."""
    prompts, targets, tokenizer = ml100k_prompts(users)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "prompts.pkl"), "wb") as f:
        pickle.dump({"prompts": prompts, "targets": targets}, f)
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))


def load_prompts(folder: str) -> Tuple[Dict[str, List[Prompt]], List[int], object]:
    """What ``save_prompts`` wrote."""
    from transformers import AutoTokenizer

    with open(os.path.join(folder, "prompts.pkl"), "rb") as f:
        saved = pickle.load(f)
    return saved["prompts"], saved["targets"], AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))


class HeadRows:
    """Counts the rows the LM head runs (logit positions, pads included) while installed."""

    def __init__(self, model):
        self.rows = 0
        self._hook = model.get_output_embeddings().register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        self.rows += args[0].shape[:-1].numel()

    def close(self) -> None:
        self._hook.remove()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: the peak RSS (VmHWM) restarts from the RSS now
            f.write("5")


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def prompt_tokens(tokenizer, prompt: Prompt) -> int:
    """A prompt's tokens as a naive scorer reads them: prefix, user part and every candidate's tokens."""
    prefix, suffix = encode_parts(tokenizer, prompt)
    return len(prefix) + len(suffix) + sum(len(tokenizer(c, add_special_tokens=False).input_ids)
                                           for c in prompt.candidates)


def likelihood_scorer(model, tokenizer, batching: Batching) -> LLMScorer:
    """The scorer a default run uses (likelihood, title mean, 20 candidates a row), score cache off."""
    return LLMScorer(model, tokenizer, "likelihood", 20, batching=batching, score_cache=None, model_id="",
                     title_score="mean", title_score_tokens=None)


def measure(model: torch.nn.Module, tokenizer: Any, prompts: List[Prompt], tokens: List[int], batch: str,
            seconds: float, device: str) -> dict:
    """One row: ``prompts`` (of ``tokens`` prompt tokens each) scored a chunk at a time at ``batch`` until the chunk
    that passes ``seconds``."""
    scorer = likelihood_scorer(model, tokenizer, make_batching(batch if batch == "auto" else int(batch), model))
    scorer.score_many(prompts[:1])  # warm-up, untimed
    counts_before = scorer.counts.forward_tokens, scorer.counts.pad_tokens
    head, done = HeadRows(model), 0
    reset_peak(device)
    start = time.perf_counter()
    try:
        while done < len(prompts) and time.perf_counter() - start < seconds:
            chunk = prompts[done: done + scorer.chunk_users]
            scorer.score_many(chunk)
            done += len(chunk)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        head.close()
    run = scorer.counts.forward_tokens - counts_before[0]
    pads = scorer.counts.pad_tokens - counts_before[1]
    config = model.config
    flops = 2 * non_embedding_params(model) * (run - pads) + 2 * config.hidden_size * config.vocab_size * head.rows
    return {"batch": batch, "batching": str(scorer.batching), "users": done, "seconds": elapsed,
            "users_per_s": done / elapsed, "tokens_per_s": sum(tokens[:done]) / elapsed,
            "tflops": flops / elapsed / 1e12, "peak_mb": peak_mb(device), "pad_share": pads / run if run else 0.0,
            "forward_tokens": run, "pad_tokens": pads, "head_rows": head.rows}


KINDS = {  # an aten operator's kind, by words of its name, first match wins
    "attention": ("attention", "softmax"),
    "matmul": ("aten::mm", "addmm", "bmm", "aten::linear", "aten::matmul"),
    "logits' log-sum-exp": ("logsumexp", "amax", "aten::exp", "aten::sub"),
    "norms, rotary, SwiGLU": ("aten::mul", "aten::add", "silu", "pow", "rsqrt", "neg", "mean"),
    "copies, masks, gathers": ("copy", "cat", "index", "where", "fill", "clone", "select", "repeat", "expand"),
}


def kind_of(name: str) -> str:
    name = name.lower()
    return next((kind for kind, words in KINDS.items() if any(w in name for w in words)), "other")


def profile(model, tokenizer, prompts: List[Prompt], device: str) -> str:
    """Where an auto chunk's time goes (``PROFILE_USERS`` users at most): the aten operators' own time by kind (on a
    GPU, the device time of the kernels each launched, each kernel counted once, under the operator that launched
    it), and the rest (Python, the scorer's own work, launch gaps, the device idle) as wall time less that."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as torch_profile

    scorer = likelihood_scorer(model, tokenizer, make_batching("auto", model))
    scorer.score_many(prompts[:1])
    chunk = prompts[1: 1 + min(PROFILE_USERS, scorer.chunk_users)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        scorer.score_many(chunk)
        if device == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    totals: Dict[str, float] = {kind: 0.0 for kind in [*KINDS, "other"]}
    for event in prof.key_averages():
        if event.device_type != DeviceType.CPU:  # a kernel: its time is its launching operator's already
            continue
        gpu_time = getattr(event, "self_device_time_total", None)
        gpu_time = event.self_cuda_time_total if gpu_time is None else gpu_time
        totals[kind_of(event.key)] += (gpu_time if device == "cuda" else event.self_cpu_time_total) / 1e6
    busy = sum(totals.values())
    lines = [f"{kind} {secs:.2f} s ({secs / wall:.0%})" for kind, secs in totals.items()]
    lines.append(f"outside them (Python, launches, the device waiting) {max(0.0, wall - busy):.2f} s "
                 f"({max(0.0, wall - busy) / wall:.0%})")
    return f"{len(chunk)} users, {wall:.1f} s: " + "; ".join(lines)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "CPU")
    return f"{model}, {torch.get_num_threads()} threads"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shapes", default="", help=f"comma-separated, or all: {', '.join(SHAPES)} "
                                                     "(default: smollm2-135m on a CPU, all on a GPU)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--batches", default=",".join(BATCHES))
    parser.add_argument("--users", type=int, default=0, help="test users a row may score (default: 32 on a CPU, "
                                                             "all 943 on a GPU)")
    parser.add_argument("--seconds", type=float, default=0, help="a row stops after the chunk that passes this "
                                                                 "(default: 60 on a CPU, 10 on a GPU)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--prompts", default="", help="read the prompts from this folder (--save_prompts wrote it) "
                                                      "instead of building them (no RecBole or default LLM needed)")
    parser.add_argument("--save_prompts", default="", help="write all 943 users' prompts to this folder and stop")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    args = parser.parse_args(argv)
    if args.save_prompts:
        save_prompts(args.save_prompts, None)
        return 0
    gpu = args.device == "cuda"
    shapes = list(SHAPES) if args.shapes == "all" or (gpu and not args.shapes) else (args.shapes or "smollm2-135m").split(",")
    modes, batches = args.modes.split(","), args.batches.split(",")
    seconds = args.seconds or (10 if gpu else 60)
    users = args.users or (None if gpu else 32)
    prompts, _, tokenizer = load_prompts(args.prompts) if args.prompts else ml100k_prompts(users)
    prompts = {mode: rows[:users] for mode, rows in prompts.items()}
    peak = matmul_flops(*(PEAK_N[args.device],) * 3, torch.bfloat16, device=args.device)
    print(f"{device_name(args.device)}; bf16 matmul peak {peak / 1e12:.2f} TFLOP/s ({PEAK_N[args.device]}^3); "
          f"torch {torch.__version__}")
    tokens = {mode: [prompt_tokens(tokenizer, p) for p in rows] for mode, rows in prompts.items()}
    rows, profiles = [], []
    for shape in shapes:
        model = random_model(shape, "bfloat16", args.device)
        for mode in modes:
            for batch in batches:
                try:
                    row = measure(model, tokenizer, prompts[mode], tokens[mode], batch, seconds, args.device)
                except Exception as exc:  # noqa: BLE001 - one row's failure (out of memory) is a row of the table
                    print(f"{shape} {mode} batch {batch}: failed: {type(exc).__name__}: {exc}", flush=True)
                    release(args.device)
                    continue
                rows.append({"shape": shape, "mode": mode, **row, "share_of_peak": row["tflops"] * 1e12 / peak})
                print(f"{shape:<13} {mode:<9} batch {batch:>4}: {row['users_per_s']:8.2f} users/s "
                      f"{row['tokens_per_s']:10.0f} tok/s {row['tflops']:7.3f} TFLOP/s {rows[-1]['share_of_peak']:6.1%} "
                      f"peak {row['peak_mb']:8.0f} MB pads {row['pad_share']:5.1%} ({row['users']} users)", flush=True)
                write(rows, profiles, args.device, peak, args.out)  # a run cut short keeps its rows
            if args.profile:
                profiles.append(f"{shape}, {mode}: " + profile(model, tokenizer, prompts[mode], args.device))
                print(profiles[-1], flush=True)
                write(rows, profiles, args.device, peak, args.out)
        del model
        release(args.device)
    return 0


def release(device: str) -> None:
    """Hand a GPU's cached blocks back after a model or a failed row."""
    if device == "cuda":
        torch.cuda.empty_cache()


def write(rows: List[dict], profiles: List[str], device: str, peak: float, folder: str) -> None:
    import transformers

    out = os.path.join(folder, f"throughput_{device}")
    head = (f"{device_name(device)}; torch {torch.__version__}, transformers {transformers.__version__}; bf16 matmul "
            f"peak {peak / 1e12:.2f} TFLOP/s ({PEAK_N[device]}^3, measured in the same run)")
    lines = ["# Scoring throughput (benchmarks/throughput.py)", "", head, "",
             "| shape | mode | user_batch_size | users/s | prompt tokens/s | TFLOP/s | share of peak | peak MB | pads | users |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['mode']} | {r['batching'] if r['batch'] == 'auto' else r['batch']} | "
              f"{r['users_per_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3f} | {r['share_of_peak']:.1%} | "
              f"{r['peak_mb']:,.0f} | {r['pad_share']:.1%} | {r['users']} |" for r in rows]
    if profiles:
        lines += ["", "Where an auto chunk's time goes (torch.profiler):", ""] + [f"- {p}" for p in profiles]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump({"device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
                   "peak_tflops": peak / 1e12, "rows": rows, "profiles": profiles}, f, indent=1)


if __name__ == "__main__":
    run_script(main)

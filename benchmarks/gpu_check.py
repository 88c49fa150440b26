"""Device check: LRGD on CUDA, beside the CPU path and RecBole baselines on the same candidates.

Random LLaMA models built offline (no hub): the ``tiny`` one for equality checks, and one with the
default LLM's shapes (SmolLM2-135M: 30 layers, 576 wide, 9/3 heads; byte-level vocab) for speed.

    python benchmarks/gpu_check.py [--out DIR]
"""
import argparse
import json
import os
import sys
import time
from typing import Any, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_lrgd.llm.loader import load_llm  # noqa: E402
from recbole_lrgd.llm.prompt import Demonstration, build_prompt, encode_prompt  # noqa: E402
from recbole_lrgd.llm.modes import make_scorer  # noqa: E402
from recbole_lrgd.llm.title_score import naive_likelihood  # noqa: E402
from recbole_lrgd.llm.tiny import save_tiny_llm  # noqa: E402
from recbole_lrgd.properties_files import shipped_defaults  # noqa: E402
from recbole_lrgd.quick_start import run  # noqa: E402
from recbole_lrgd.results import RunResult  # noqa: E402
from recbole_lrgd.settings import ScorerSettings  # noqa: E402


def scorer_equality(path: str, device: str, dtype: str) -> float:
    model, tok = load_llm(path, device=device, dtype=dtype)
    settings = ScorerSettings.from_config({**shipped_defaults("model/LRGD.yaml"), "scorer_mode": "likelihood",
                                           "candidate_batch_size": 7, "user_batch_size": 8, "title_score": "mean"})
    scorer = make_scorer(model, tok, settings)
    cands = [f"Candidate {'x' * (i % 5)} {i}" for i in range(20)]
    worst = 0.0
    for user in range(3):
        prompt = build_prompt(tok, [Demonstration(("Alpha", "Beta"), "Gamma")], [f"User {user}", "Delta"], cands,
                              seed=(0, user), mode="likelihood", demo_format="next_item")
        cached = scorer.score(prompt)
        naive = naive_likelihood(model, encode_prompt(tok, prompt), [scorer.candidate_ids(c) for c in cands])
        worst = max(worst, float(np.abs(cached - naive).max()))
    return worst


def timed_run(model: str, **cfg: Any) -> Tuple[Optional[RunResult], float]:
    start = time.time()
    result = run(model, "ml-100k", config_dict={"show_progress": False, "state": "WARNING", **cfg}, saved=False)
    return result, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    parser.add_argument("--eval_users", type=int, default=300)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    tiny, smol = save_tiny_llm("/tmp/lrgd-tiny"), save_tiny_llm("/tmp/lrgd-smol", "smollm2-135m")
    report["cached_vs_naive_max_abs"] = {f"{d}/{t}": scorer_equality(tiny, d, t)
                                         for d, t in [("cuda", "float32"), ("cuda", "bfloat16"), ("cpu", "float32")]}
    common = {"eval_users": args.eval_users, "demo_mode": "random"}
    gpu, gpu_time = timed_run("LRGD", llm_path=tiny, llm_dtype="float32", **common)
    cpu, cpu_time = timed_run("LRGD", llm_path=tiny, llm_dtype="float32", use_gpu=False, **common)
    report["tiny_cuda_vs_cpu"] = {"cuda": gpu.test_result, "cpu": cpu.test_result,
                                  "equal": gpu.test_result == cpu.test_result,
                                  "cuda_s": gpu_time, "cpu_s": cpu_time}
    speed = {}
    for dtype in ("bfloat16", "float32"):
        res, secs = timed_run("LRGD", llm_path=smol, llm_dtype=dtype, **common)
        speed[dtype] = {"eval_s": res.eval_time, "users_per_s": res.test_users / res.eval_time,
                        "wall_s": secs}
    report["smollm2_shape_speed"] = speed
    digests = {"LRGD": gpu.candidates}  # a digest of the evaluated users' candidate sets: equal = the same sets
    for name, cfg in [("SASRec", {"epochs": 20}), ("Pop", {})]:
        res, secs = timed_run(name, eval_users=args.eval_users, **cfg)
        digests[name] = res.candidates
        report[name] = {"test_result": res.test_result, "wall_s": secs, "fit_s": res.fit_time}
    report["candidates_digests"] = digests
    report["identical_candidates"] = all(digest == digests["LRGD"] for digest in digests.values())
    text = json.dumps(report, indent=1, default=float)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

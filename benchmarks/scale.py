"""Users scored per second by LRGD with 1 and with N processes (``accelerate launch``), same run otherwise.

    python benchmarks/scale.py                        # default LLM, ml-100k, 20 test users, 1 vs 2 processes
    python benchmarks/scale.py --users 40 --processes 1 2 --extra --demo_mode=nearest

Each run is ``run_recbole_lrgd.py`` with ``score_cache: False`` (every score is computed), one thread
per process (``OMP_NUM_THREADS=1``) and CPU only unless ``--gpu``. users/s = test users / test time
(rank 0's evaluation wall time, the sharded scoring and the gather included). The metrics of every
run must be equal; the script says so, or stops.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(ROOT, "run_recbole_lrgd.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(processes: int, args, workdir: str) -> dict:
    out_file = os.path.join(workdir, f"result-{processes}.json")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ROOT}
    if not args.gpu:
        env.update({"CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"})
    cmd = [sys.executable]
    if processes > 1:  # accelerate's torchrun launcher; on CPU the ranks talk over gloo
        cmd += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    cmd += [CLI, f"--dataset={args.dataset}", f"--eval_users={args.users}", "--score_cache=False",
            "--show_progress=False", "--state=WARNING", f"--use_gpu={args.gpu}", f"--result_file={out_file}"]
    if args.llm_path:
        cmd.append(f"--llm_path={args.llm_path}")
    cmd += args.extra
    start = time.time()
    proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"{processes} process(es) failed:\n{proc.stdout[-4000:]}")
    with open(out_file, encoding="utf-8") as f:
        result = json.load(f)
    result["wall"] = wall
    result["users_per_s"] = result["test_users"] / result["eval_time"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20, help="eval_users (default 20)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--llm_path", default=None, help="default: the config's (SmolLM2-135M-Instruct)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process")
    parser.add_argument("--gpu", action="store_true", help="let the processes use GPUs (one per process)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more --key=value config flags")
    args = parser.parse_args(argv)

    results = {}
    with tempfile.TemporaryDirectory(prefix="lrgd-scale-") as workdir:
        for n in args.processes:
            results[n] = run_once(n, args, workdir)
            r = results[n]
            print(f"{n} process(es): {r['test_users']} users in {r['eval_time']:.1f}s = {r['users_per_s']:.2f} users/s "
                  f"(whole run {r['wall']:.1f}s wall)", flush=True)
    base = results[args.processes[0]]
    for n, r in results.items():
        if r["test_result"] != base["test_result"] or r["global_demo_users"] != base["global_demo_users"]:
            sys.exit(f"metrics differ: {args.processes[0]} process(es) {base['test_result']} vs {n}: {r['test_result']}")
    print(f"metrics equal across runs (ndcg@10 {base['test_result'].get('ndcg@10', float('nan')):.4f})")
    for n in args.processes[1:]:
        print(f"users/s ratio {n} / {args.processes[0]} processes: "
              f"{results[n]['users_per_s'] / base['users_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

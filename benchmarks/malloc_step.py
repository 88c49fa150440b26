"""A CPU training step of SASRec's shape with glibc's default malloc and with freed memory kept
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``, as ``benchmarks/out/slices/run.sh`` sets): seconds a step,
page faults, peak memory, and whether the two end with the same weights.

    python benchmarks/malloc_step.py [--steps 3] [--items 12102] [--batch 2048] [--threads 1]

The step is RecBole's SASRec at the benchmark's settings (2 layers, hidden 64, inner 256, 2 heads, dropout 0.5,
batch 2048, length 50, cross-entropy over every item; ``--items``: amazon-beauty's by default) on seeded random
sequences. Each setting runs in a process of its own, as the environment must be set before Python starts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def step_run(steps: int, items: int, batch: int) -> dict:
    """Seconds a step after a first one, and the weights' digest after all of them."""
    import torch
    from recbole.model.layers import TransformerEncoder

    torch.manual_seed(0)
    length, hidden = 50, 64
    encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=hidden, inner_size=256, hidden_dropout_prob=0.5,
                                 attn_dropout_prob=0.5, hidden_act="gelu", layer_norm_eps=1e-12)
    embedding, position = torch.nn.Embedding(items, hidden), torch.nn.Embedding(length, hidden)
    params = [*encoder.parameters(), *embedding.parameters(), *position.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    sequences, targets = torch.randint(1, items, (batch, length)), torch.randint(1, items, (batch,))
    causal = torch.tril(torch.ones(length, length)).bool()
    mask = torch.where(causal[None, None], 0.0, -10000.0).expand(batch, 1, length, length)

    def step() -> None:
        hidden_states = encoder(embedding(sequences) + position.weight[None], mask)[-1][:, -1]
        loss = torch.nn.functional.cross_entropy(hidden_states @ embedding.weight.T, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # the first allocates what later steps may reuse
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.time()
    for _ in range(steps):
        step()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in params)).hexdigest()[:16]
    return {"s_per_step": (time.time() - start) / steps, "faults_per_step": (usage.ru_minflt - faults) / steps,
            "peak_gb": usage.ru_maxrss / 2 ** 20, "weights": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--items", type=int, default=12102)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(step_run(args.steps, args.items, args.batch)))
        return
    results = {}
    for name, extra in (("default malloc", {}), ("freed memory kept", KEEP_FREED)):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), **extra}
        command = [sys.executable, __file__, "--child", f"--steps={args.steps}", f"--items={args.items}",
                   f"--batch={args.batch}"]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        print(f"{name}: {r['s_per_step']:.2f} s a step, {r['faults_per_step']:,.0f} page faults a step, "
              f"peak {r['peak_gb']:.1f} GB")
    same = len({r["weights"] for r in results.values()}) == 1
    print("same weights bit for bit" if same else "the weights differ")


if __name__ == "__main__":
    main()

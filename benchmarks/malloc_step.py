"""A CPU training step of SASRec's shape with glibc's default malloc and with freed memory kept
(``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``, as ``benchmarks/out/slices/run.sh`` sets): seconds a step,
page faults, peak memory, and whether the two end with the same weights.

    python benchmarks/malloc_step.py [--steps 3] [--items 12102] [--batch 2048] [--threads 1]

The step is SASRec's encoder and loss (RecBole's ``TransformerEncoder``) at RecBole's SASRec defaults and the
benchmark's batch: 2 layers, hidden 64, inner 256, 2 heads, dropout 0.5, batch 2048, length 50, cross-entropy over
every item (``--items``: amazon-beauty's 12,102 by default), on seeded random sequences. Each setting runs in a
process of its own, from an environment without the caller's malloc settings, as glibc reads them at start.
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

KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}  # glibc >= 2.26 reads 64 bits


def step_run(steps: int, items: int, batch: int) -> dict:
    """Seconds a step after a first one, page faults, peak memory, the weights' digest after all of them, and the
    malloc settings the process ran with."""
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
            "peak_gib": usage.ru_maxrss / 2 ** 20, "weights": digest,
            "malloc": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if _is_malloc_setting(k)) or "none"}


def _is_malloc_setting(name: str) -> bool:
    return name.startswith("MALLOC_") or name == "GLIBC_TUNABLES"


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
    plain = {k: v for k, v in os.environ.items() if not _is_malloc_setting(k)}
    for name, extra in (("default malloc", {}), ("freed memory kept", KEEP_FREED)):
        env = {**plain, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), **extra}
        command = [sys.executable, __file__, "--child", f"--steps={args.steps}", f"--items={args.items}",
                   f"--batch={args.batch}"]
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        print(f"{name}: {r['s_per_step']:.2f} s a step, {r['faults_per_step']:,.0f} page faults a step, "
              f"peak {r['peak_gib']:.1f} GiB (malloc settings: {r['malloc']})")
    same = len({r["weights"] for r in results.values()}) == 1
    print("same weights bit for bit" if same else "the weights differ")


if __name__ == "__main__":
    main()

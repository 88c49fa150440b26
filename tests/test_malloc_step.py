"""benchmarks/malloc_step.py: a SASRec training step with glibc keeping the memory torch frees ends with the weights
of glibc's default, and the digest it compares them by reads the weights."""
from __future__ import annotations

import os
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import malloc_step  # noqa: E402


def test_keeping_freed_memory_trains_to_the_same_weights():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "malloc_step.py"), "--steps=2", "--items=300",
                          "--batch=64"], capture_output=True, text=True, timeout=300, check=True, env=env).stdout
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["default malloc", "freed memory kept", "same weights bit for bit"]


def test_the_digest_follows_the_weights():
    one, two = (malloc_step.step_run(steps, items=300, batch=16) for steps in (1, 2))
    assert one["weights"] != two["weights"] and malloc_step.step_run(1, items=300, batch=16)["weights"] == one["weights"]

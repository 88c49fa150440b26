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
    """Each run has its own malloc settings, whatever the caller's (here the kept ones, as run.sh exports them)."""
    env = {**os.environ, **malloc_step.KEEP_FREED}
    out = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "malloc_step.py"), "--steps=2", "--items=300",
                          "--batch=64"], capture_output=True, text=True, timeout=300, check=True, env=env).stdout
    default, kept, verdict = out.strip().splitlines()
    assert default.startswith("default malloc:") and default.endswith("(malloc settings: none)")
    assert kept.startswith("freed memory kept:") and kept.endswith(
        "(malloc settings: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736)")
    assert verdict == "same weights bit for bit"


def test_the_slice_study_keeps_freed_memory_as_measured():
    with open(os.path.join(BENCHMARKS, "out", "slices", "run.sh"), encoding="utf-8") as f:
        exported = [line.split()[1:] for line in f if line.startswith("export MALLOC_")]
    assert exported == [[f"{k}={v}" for k, v in malloc_step.KEEP_FREED.items()]]


def test_the_digest_follows_the_weights():
    one, two, again = (malloc_step.step_run(steps, items=300, batch=16) for steps in (1, 2, 1))
    assert one["weights"] != two["weights"] and again["weights"] == one["weights"]

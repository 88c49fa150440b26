"""What this machine offers the LLM: native bf16 matrix units on the CPU, and the cores the process may use.

Both are read at run time, so one install picks bf16 on a CPU with AMX or AVX512-BF16 (where bf16
matmuls outrun fp32: docs/performance.md) and float32 elsewhere, and uses the cores a scheduler or
``taskset`` gave the process rather than the machine's count.
"""
from __future__ import annotations

import os
from typing import Optional, Set

import torch

# CPU feature flags (as /proc/cpuinfo and torch name them) -> the unit's name, best first
BF16_UNITS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


def cpu_flags() -> Set[str]:
    """The CPU's feature flags: torch's own detection (cpuinfo, any OS), else Linux's /proc/cpuinfo."""
    probe = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    if probe is not None:
        try:
            return {name for name, present in probe().items() if present is True}
        except Exception:  # noqa: BLE001 - a private API: fall back to the OS
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16_unit() -> Optional[str]:
    """The CPU's bf16 matrix unit (``"AMX-BF16"`` or ``"AVX512-BF16"``), or None where bf16 is emulated."""
    flags = cpu_flags()
    return next((name for flag, name in BF16_UNITS if flag in flags), None)


def available_cores() -> int:
    """Threads to use: ``OMP_NUM_THREADS`` when set to a positive integer, else the cores this process
    may run on (its affinity), not the machine's count."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def use_available_cores() -> int:
    """Set torch's intra-op threads to ``available_cores()``; returns that number."""
    threads = available_cores()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads

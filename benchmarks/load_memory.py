"""Peak host memory (RSS) of loading an LLM the way LRGD loads it, against the size of its weights.

    python benchmarks/load_memory.py --make /tmp/qwen1.5b --shape qwen2.5-1.5b   # random weights, bf16 safetensors
    python benchmarks/load_memory.py /tmp/qwen1.5b                                # measure (a fresh process per load)

Throughput and memory do not depend on the weights' values, so a random-weight model of a real model's shape
stands in for it (no 1.5B or 8B weights install offline). Each load runs in a fresh process, which reports its
RSS after importing torch and transformers (``before``) and its peak RSS (``ru_maxrss``) once the model is
loaded and every weight read once; the summary is appended to ``benchmarks/out/load_memory.md``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
from typing import Optional

from shapes import SHAPES, random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURE = """
import json, resource, sys
sys.path.insert(0, {root!r})
import torch, transformers
from recbole_lrgd.llm.loader import load_llm
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
before = rss_mb()
model, _ = load_llm({path!r}, device="cpu", dtype={dtype!r}, cache_dir={cache_dir!r})
with torch.no_grad():  # read every weight once, as scoring does (a memory-mapped file is resident only once read)
    touched = sum(float(p.sum()) for p in model.parameters())
print(json.dumps({{"before_mb": before, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "after_mb": rss_mb(), "params": sum(p.numel() for p in model.parameters()),
                  "loaded_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20,
                  "dtype": str(next(model.parameters()).dtype)}}))
"""


def make(folder: str, shape: str) -> None:
    """A random-weight model of ``shape`` saved in bfloat16 (built in bfloat16: no float32 copy)."""
    random_model(shape).save_pretrained(folder)


def measure(folder: str, dtype: str, cache_dir: Optional[str] = None) -> dict:
    """One load in a fresh process: its RSS before the load, its peak, and the weights' bytes on disk."""
    out = subprocess.run([sys.executable, "-c", MEASURE.format(root=ROOT, path=folder, dtype=dtype, cache_dir=cache_dir)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    files = [folder] if os.path.isfile(folder) else glob.glob(os.path.join(folder, "*.safetensors"))  # a GGUF, or a folder
    result["file_mb"] = sum(os.path.getsize(p) for p in files) / 2 ** 20
    result["ratio"] = result["peak_mb"] / result["loaded_mb"]
    result["ratio_over_before"] = (result["peak_mb"] - result["before_mb"]) / result["loaded_mb"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--make", action="store_true", help="save a random-weight model of --shape in the folder")
    parser.add_argument("--shape", choices=list(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--cache_dir", default=None, help="llm_cache_dir (default: none, as llm_cache_dir: ~)")
    parser.add_argument("--label", default="", help="what is measured (e.g. the commit), for the summary line")
    args = parser.parse_args()
    if args.make:
        make(args.folder, args.shape)
        return 0
    r = measure(args.folder, args.dtype, args.cache_dir)
    line = (f"| {args.label or os.path.basename(args.folder.rstrip('/'))} | {r['params'] / 1e9:.2f}B | {r['dtype']} | "
            f"{r['file_mb']:.0f} | {r['loaded_mb']:.0f} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['ratio']:.2f} | {r['ratio_over_before']:.2f} |")
    print(line)
    os.makedirs(os.path.join(ROOT, "benchmarks", "out"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", "out", "load_memory.md")
    if not os.path.isfile(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write("| load | params | dtype | file MB | loaded weights MB | RSS before MB | peak RSS MB | "
                    "peak / weights | (peak - before) / weights |\n|---|---|---|---|---|---|---|---|---|\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/bin/bash
# The GPU run, one call on one card: the throughput sweep (three random-weight shapes, zero-shot and nearest,
# user_batch_size 1, 8, 32, 128 and auto, a profile per shape) and the same model and prompts as a CPU reference
# (scores and NDCG@10 against this CPU's under its batches, users/s at the card's auto). Each table is written as
# its rows come. About 8 minutes; give it timeout_s=570 and keep time to rerun.
#
# Here, first (a CPU with the project's venv), into the git-ignored folder .gpu (about 7 MB):
#   python benchmarks/throughput.py --save_prompts .gpu          # 943 ml-100k users' prompts and the tokenizer
#   python benchmarks/gpu_equality.py --prompts .gpu --device cpu --save .gpu/cpu_scores.json
# Then the device tool: run(command="bash benchmarks/gpu_scale.sh", carry=[".gpu"], timeout_s=570).
# The GPU image has torch and transformers; it needs neither RecBole nor the default LLM's weights (94 MiB, more than
# a call carries beside the tree): the equality check runs the SmolLM2 shape with seeded random weights on both.
set -o pipefail
out=${OUT:-benchmarks/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=$(command -v python3 || command -v python)
[ -f .gpu/prompts.pkl ] && [ -f .gpu/cpu_scores.json ] || { echo "error: .gpu/ lacks prompts.pkl or cpu_scores.json: prepare it first (see this script's head)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
timeout 440 $py benchmarks/throughput.py --device cuda --shapes all --prompts .gpu --seconds 5 --profile --out "$out" 2>&1 | tee "$out/throughput.log"
timeout 120 $py benchmarks/gpu_equality.py --prompts .gpu --device cuda --reference .gpu/cpu_scores.json --out "$out" 2>&1 | tee "$out/equality.log"

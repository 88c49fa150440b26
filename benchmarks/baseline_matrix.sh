#!/usr/bin/env bash
# LRGD zero-shot, LRGD random demonstrations, Pop and SASRec on the same split and candidates,
# one CLI run each, with its wall time. Usage: benchmarks/baseline_matrix.sh [DATA_PATH] [EVAL_USERS]
set -uo pipefail
DATA=${1:-../shared/data}
USERS=${2:-100}
OUT=${OUT_DIR:-benchmarks/out}
mkdir -p "$OUT"
for ds in ml-100k amazon-beauty amazon-video-games-18; do
  for run in "LRGD --demo_mode=none" "LRGD --demo_mode=random" "Pop" "SASRec --epochs=${SASREC_EPOCHS:-20}"; do
    set -- $run
    model=$1; shift
    cmd="python run_recbole_lrgd.py --model=$model --dataset=$ds --data_path=$DATA --eval_users=$USERS --show_progress=False $*"
    start=$(date +%s.%N)
    result=$($cmd 2>/dev/null | grep '^test result')
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    printf '%s\t%s\t%.1f\t%s\n' "$ds" "$model $*" "$wall" "$result" | tee -a "$OUT/baseline_matrix.tsv"
    echo "  $cmd" >> "$OUT/baseline_matrix.cmds"
  done
done

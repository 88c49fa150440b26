#!/usr/bin/env bash
# LRGD zero-shot, LRGD random demonstrations, Pop and SASRec on the same split and candidates,
# one CLI run each, with its wall time.
#   benchmarks/baseline_matrix.sh [DATA_PATH] [EVAL_USERS]
#   DATASETS="ml-100k amazon-beauty" RUNS="LRGD:--demo_mode=none Pop" benchmarks/baseline_matrix.sh
set -uo pipefail
DATA=${1:-../shared/data}
USERS=${2:-100}
OUT=${OUT_DIR:-benchmarks/out}
DATASETS=${DATASETS:-ml-100k amazon-beauty amazon-video-games-18}
RUNS=${RUNS:-LRGD:--demo_mode=none LRGD:--demo_mode=random Pop SASRec:--epochs=20}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
for ds in $DATASETS; do
  for run in $RUNS; do
    model=${run%%:*}
    extra=""; [ "$run" != "$model" ] && extra=${run#*:}
    cmd="$PYTHON run_recbole_lrgd.py --model=$model --dataset=$ds --data_path=$DATA --eval_users=$USERS --show_progress=False ${extra//,/ }"
    start=$(date +%s%N)
    result=$($cmd 2>/dev/null | grep '^test result')
    wall=$(( ($(date +%s%N) - start) / 1000000 ))
    printf "%s\t%s\t%d.%03d\t%s\n" "$ds" "$model $extra" $((wall / 1000)) $((wall % 1000)) "$result" | tee -a "$OUT/baseline_matrix.tsv"
    echo "$cmd" >> "$OUT/baseline_matrix.cmds"
  done
done

#!/bin/bash
# Issue 35's measurement: per dataset the plain rows, the fused rows and the slices, resumable (the benchmark's
# store and the score cache). Run from a checkout of the commit that made it, one thread:
#   OMP_NUM_THREADS=1 bash benchmarks/out/slices/run.sh /work/main
out=${1:-.}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
models=LRGD-zero-shot,LRGD-nearest,Pop,BPR,SASRec,Pop+LRGD-nearest,BPR+LRGD-nearest,SASRec+LRGD-nearest
pairs=LRGD-nearest:LRGD-zero-shot,LRGD-nearest:Pop,LRGD-nearest:BPR,LRGD-nearest:SASRec,Pop+LRGD-nearest:Pop
pairs=$pairs,Pop+LRGD-nearest:LRGD-nearest,BPR+LRGD-nearest:BPR,BPR+LRGD-nearest:LRGD-nearest
pairs=$pairs,SASRec+LRGD-nearest:SASRec,SASRec+LRGD-nearest:LRGD-nearest
for ds in amazon-beauty amazon-toys-games amazon-video-games-18 ml-100k; do
  users=1000; dp=--data_path=../shared/data; [ $ds = ml-100k ] && users="~" && dp=""
  echo "== $ds $(date -u)"
  python benchmarks/compare.py --dataset=$ds $dp --eval_users=$users --models=$models --pairs=$pairs --slices=True \
    --out=$out/benchmarks/out/slices --no_plot --score_cache_dir=$out/saved/score_cache --checkpoint_dir=$out/saved
  echo "== $ds done rc=$? $(date -u)"
done

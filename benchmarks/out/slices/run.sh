#!/bin/bash
# Issue 35's measurement: per dataset the plain rows, the fused rows and the slices, resumable (the benchmark's
# store and the score cache). From a checkout:
#   bash benchmarks/out/slices/run.sh [folder of the stores and caches, default .]
# Two passes: every row but SASRec's on the four datasets, then SASRec and SASRec+LRGD-nearest (the slowest to train
# on a CPU). A pass run again reuses the rows it has; SASRec, trained once for both of its rows, resumes its training
# at the epoch where it stopped (checkpoint_dir). PASSES and DATASETS pick a part (two jobs on two cores), THREADS
# the threads of a job (default 1; keep it for every sitting of one training, whose resumed weights equal an
# uninterrupted training's at the same thread count).
out=${1:-.}
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
# glibc (2.26 or later) keeps freed memory rather than mapping each training step's large activations afresh and
# faulting their pages in again: a CPU training step runs faster, to the same weights bit for bit (every row run here)
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
pairs=LRGD-nearest:LRGD-zero-shot,LRGD-nearest:Pop,LRGD-nearest:BPR,Pop+LRGD-nearest:Pop
pairs=$pairs,Pop+LRGD-nearest:LRGD-nearest,BPR+LRGD-nearest:BPR,BPR+LRGD-nearest:LRGD-nearest
all=LRGD-zero-shot,LRGD-nearest,Pop,BPR,SASRec,Pop+LRGD-nearest,BPR+LRGD-nearest,SASRec+LRGD-nearest
for pass in ${PASSES:-first second}; do
  for ds in ${DATASETS:-amazon-beauty amazon-toys-games amazon-video-games-18 ml-100k}; do
    users=1000; dp=--data_path=../shared/data; [ $ds = ml-100k ] && users="~" && dp=""
    models=$all; p=$pairs,LRGD-nearest:SASRec,SASRec+LRGD-nearest:SASRec,SASRec+LRGD-nearest:LRGD-nearest
    if [ $pass = first ]; then models=LRGD-zero-shot,LRGD-nearest,Pop,BPR,Pop+LRGD-nearest,BPR+LRGD-nearest; p=$pairs; fi
    echo "== $pass $ds $(date -u)"
    python benchmarks/compare.py --dataset=$ds $dp --eval_users=$users --models=$models --pairs=$p --slices=True \
      --out=$out/benchmarks/out/slices --no_plot --score_cache_dir=$out/saved/score_cache --checkpoint_dir=$out/saved
    echo "== $pass $ds done rc=$? $(date -u)"
  done
done

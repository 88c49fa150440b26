"""Side-by-side benchmark of LRGD variants and RecBole baselines (same split, users, candidates).

    python benchmarks/compare.py --dataset=ml-100k --models=LRGD-zero-shot,LRGD-random,Pop,SASRec
    python benchmarks/compare.py --dataset=amazon-beauty --data_path=../shared/data --eval_users=200
    python benchmarks/compare.py --list

The same as ``python run_recbole_lrgd.py --benchmark ...``; see ``recbole_lrgd/benchmark/``.
Writes benchmarks/out/compare_<dataset>.{md,csv,png,json}; re-running skips finished rows.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_lrgd.benchmark.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Run LRGD or any RecBole model on one dataset, one split, one candidate set, from a checkout.

    python run_recbole_lrgd.py                                   # LRGD on ml-100k, default LLM
    python run_recbole_lrgd.py --model=SASRec                    # a RecBole baseline, same protocol
    python run_recbole_lrgd.py --dataset=amazon-beauty --data_path=../shared/data --demo_mode=nearest
    accelerate launch --multi_gpu --num_processes 2 run_recbole_lrgd.py --result_file=r.json  # docs/distributed.md
    python run_recbole_lrgd.py --benchmark --models=LRGD-zero-shot,Pop,SASRec   # side-by-side table, CSV, PNG

The same command as the installed console script ``recbole-lrgd``: see ``recbole_lrgd/cli.py``.
"""
import sys

from recbole_lrgd.cli import main

if __name__ == "__main__":
    sys.exit(main())

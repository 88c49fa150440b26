"""Run LRGD or any RecBole model on one dataset, one split, one candidate set.

    python run_recbole_lrgd.py                                   # LRGD on ml-100k, default LLM
    python run_recbole_lrgd.py --model=SASRec                    # a RecBole baseline, same protocol
    python run_recbole_lrgd.py --dataset=amazon-beauty --data_path=../shared/data --demo_mode=nearest
    python run_recbole_lrgd.py --benchmark --models=LRGD-zero-shot,Pop,SASRec   # side-by-side table, CSV, PNG

Any other ``--key=value`` is a RecBole config key (RecBole reads them from the command line).
"""
import argparse
import sys


def main(argv=None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--benchmark" in args_list:  # side-by-side table of LRGD variants and baselines: recbole_lrgd/benchmark.py
        from recbole_lrgd.benchmark import main as benchmark_main
        return benchmark_main([a for a in args_list if a != "--benchmark"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="LRGD", help="LRGD or a RecBole model name")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="RecBole dataset name")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    args, _ = parser.parse_known_args(argv)

    from recbole_lrgd.errors import LRGDError
    from recbole_lrgd.quick_start import run

    files = args.config_files.strip().split(" ") if args.config_files else None
    try:
        result = run(model=args.model, dataset=args.dataset, config_file_list=files)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = "  ".join(f"{k}: {v:.4f}" for k, v in result["test_result"].items())
    print(f"{result['model']} on {result['dataset']} ({result['test_users']} test users, "
          f"fit {result['fit_time']:.1f}s, test {result['eval_time']:.1f}s)")
    print(f"test result: {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

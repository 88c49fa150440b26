"""``python -m recbole_lrgd.benchmark``: the benchmark's command line (``recbole_lrgd.benchmark.run.main``)."""
import sys

from recbole_lrgd.benchmark.run import main

if __name__ == "__main__":
    sys.exit(main())

"""The side-by-side benchmark: LRGD variants and RecBole baselines on one dataset, one split, one candidate set.

``variants`` holds the variant grammar and the protocols (which model and config keys each row runs),
``store`` what identifies a finished row and the JSON file that keeps it, ``report`` the markdown, CSV,
bar chart and paired bootstrap lines, ``run`` the loop over variants (``run_benchmark``) and its command
line (``main``: ``python benchmarks/compare.py``, ``python run_recbole_lrgd.py --benchmark``,
``python -m recbole_lrgd.benchmark``).
"""

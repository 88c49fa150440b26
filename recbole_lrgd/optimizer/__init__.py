"""LRGD's fit: two-stage demonstration optimization (docs/theory.md)."""
from recbole_lrgd.optimizer.two_stage import DemoOptimizer, OptimizerSettings  # noqa: F401

"""LRGD's fit: two-stage demonstration optimization (spec sections 4 and 5)."""
from recbole_lrgd.optimizer.two_stage import DemoOptimizer, OptimizerSettings  # noqa: F401

"""recbole_lrgd: LRGD (ICL recommendation as gradient descent on a dual model) as a RecBole plugin."""
from recbole_lrgd import compat

compat.apply()

from recbole_lrgd.evaluator import register_metrics  # noqa: E402

register_metrics()

from recbole_lrgd.errors import LRGDError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LRGDError", "__version__"]

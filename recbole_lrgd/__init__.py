"""recbole_lrgd: LRGD (ICL recommendation as gradient descent on a dual model) as a RecBole plugin.

Importing the package changes nothing outside it: RecBole's compat shims and the EffectD metric are set up by
``config.build_config``, which ``run``, the command line and the benchmark go through.
"""
from recbole_lrgd.errors import LRGDError

__version__ = "0.1.0"
__all__ = ["LRGDError", "__version__"]

from recbole_lrgd.model.lrgd import LRGD
from recbole_lrgd.model.ranker import ICLRanker

__all__ = ["ICLRanker", "LRGD"]

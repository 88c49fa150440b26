from recbole_lrgd.model.lrgd import LRGD

__all__ = ["LRGD"]

"""RecBole's model names: the class a name stands for, and the nearest known name to one that stands for none.

The one place that checks a name, for every key and flag that names a model (``model``, ``candidate_source``,
``prior_model``, the benchmark's variants), before anything builds one. RecBole's ``get_model`` imports its exlib
package for every name it finds nowhere else, and that package needs lightgbm and xgboost, which RecBole does not
require: ``compat.shim_exlib_optional_backends`` keeps it importable, so a misspelt name is an answer, not a
traceback.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
from typing import Dict, Iterable, Optional

from recbole.utils import get_model

from recbole_lrgd.compat import shim_exlib_optional_backends
from recbole_lrgd.errors import LRGDError

# where RecBole's get_model looks for a model: one module per model, named by its class's name in lower case
RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                          "knowledge_aware_recommender", "exlib_recommender")


def recbole_model(name: str, key: str = "model") -> Optional[type]:
    """RecBole's model class called ``name``, None where RecBole has none. An exlib model whose backend is not
    installed (LightGBM, XGBoost) is an ``LRGDError`` that names the package (and the ``key`` that named it)."""
    shim_exlib_optional_backends()
    try:
        return get_model(name)
    except (ValueError, AttributeError):  # no module of that name; or a module of it, but in another case ('bpr')
        return None
    except ImportError as exc:
        raise LRGDError(f"{key} {name!r} needs the {exc.name} package, which is not installed: "
                        f"pip install {exc.name}") from None


def did_you_mean(name: str, others: Iterable[str] = ()) -> str:
    """``"; did you mean 'BPR'?"`` for the known model name nearest to ``name`` ignoring case (RecBole's, and
    ``others``), or ``""`` when none is near."""
    found: Dict[str, str] = {other.lower(): other for other in others}  # lower-case name -> name or module
    for package in RECBOLE_MODEL_PACKAGES:
        spec = importlib.util.find_spec(f"recbole.model.{package}")
        found.update({m.name: f"recbole.model.{package}.{m.name}"
                      for m in pkgutil.iter_modules(spec.submodule_search_locations)})
    close = difflib.get_close_matches(name.lower(), list(found), n=1)
    return f"; did you mean {_class_name(found[close[0]])!r}?" if close else ""


def _class_name(found: str) -> str:
    """A name given in ``others``, or the model class a RecBole module holds (the module's name if it will not
    import: an exlib model without its backend, lightgbm or xgboost)."""
    if not found.startswith("recbole.model."):
        return found
    stem = found.rsplit(".", 1)[1]
    try:
        module = importlib.import_module(found)
    except ImportError:
        return stem
    return next((name for name, obj in vars(module).items() if name.lower() == stem and isinstance(obj, type)), stem)

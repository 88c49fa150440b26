"""Shims that let RecBole 1.2.1 run on today's stack (numpy 2, torch >= 2.6, scipy >= 1.12).

``apply()`` runs where the plugin starts using RecBole (``config.build_config``, which ``run``, the
command line and the benchmark go through), never on import. Every shim checks for its own problem first
and changes nothing on a stack that does not have it; ``apply()`` is idempotent.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import io
import pickle
import sys
import types
from typing import Any

__all__ = [
    "apply",
    "shim_numpy_aliases",
    "shim_torch_load",
    "shim_dok_update",
    "shim_collector_data_struct",
    "shim_exlib_optional_backends",
    "TORCH_LOAD_MODULES",
]

# RecBole 1.2.1 modules that call a module-level ``torch.load`` on files RecBole wrote (checkpoints, pretrained
# models): the trainer for every baseline, the others for their pretraining options.
TORCH_LOAD_MODULES: tuple[str, ...] = (
    "recbole.trainer.trainer",
    "recbole.model.general_recommender.convncf",
    "recbole.model.general_recommender.nais",
    "recbole.model.general_recommender.neumf",
    "recbole.model.general_recommender.ract",
    "recbole.model.context_aware_recommender.kd_dagfm",
    "recbole.model.sequential_recommender.s3rec",
)

# What RecBole's Config.compatibility_settings assigns (np.float, np.bool, np.long, ...; used by its metrics,
# layers and datasets), with the same targets.
_NUMPY_ALIASES: dict[str, str] = {
    "bool": "bool_",
    "int": "int_",
    "float": "float64",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "str_",
}


# --- numpy 2: removed aliases ------------------------------------------------------------------------


def _set_numpy_aliases() -> None:
    import numpy as np

    for alias, target in _NUMPY_ALIASES.items():
        # vars(), not hasattr(): numpy's module __getattr__ warns about some of the removed names.
        if alias not in vars(np):
            setattr(np, alias, getattr(np, target))


def _compatibility_settings(self: Any) -> None:
    """Config.compatibility_settings without reading np.float_/np.complex_/np.unicode_, which numpy 2 removed."""
    _set_numpy_aliases()


def shim_numpy_aliases() -> None:
    """numpy 2 removed np.float_ (so RecBole's Config() raises) and np.float/np.int/... (used by its metrics/layers)."""
    import numpy as np

    from recbole.config import configurator

    _set_numpy_aliases()
    if not all(name in vars(np) for name in ("float_", "complex_", "unicode_")):
        configurator.Config.compatibility_settings = _compatibility_settings


# --- torch >= 2.6: torch.load(weights_only=True) -------------------------------------------------------


class _LoadProbe:
    """A plain object that the weights-only unpickler refuses."""


def _torch_load_defaults_to_weights_only() -> bool:
    """Whether torch.load refuses arbitrary pickles unless weights_only=False is passed (torch >= 2.6)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"probe": _LoadProbe()}, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer)
    except pickle.UnpicklingError:
        return True
    return False


class _TorchTrustedLoad(types.ModuleType):
    """Stands in for ``torch`` inside one RecBole module: all of torch, but ``load`` defaults to weights_only=False."""

    def __init__(self, torch_module: types.ModuleType) -> None:
        super().__init__(torch_module.__name__, torch_module.__doc__)
        self.__dict__["_torch"] = torch_module

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_torch"], name)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        """torch.load for files RecBole wrote itself (they pickle its Config), so a full unpickle is wanted."""
        kwargs.setdefault("weights_only", False)
        return self.__dict__["_torch"].load(*args, **kwargs)


def shim_torch_load() -> None:
    """torch >= 2.6 loads with weights_only=True, which refuses RecBole's own checkpoints (they pickle its Config)."""
    modules = [importlib.import_module(name) for name in TORCH_LOAD_MODULES]
    if any(isinstance(module.torch, _TorchTrustedLoad) for module in modules):
        return
    if _torch_load_defaults_to_weights_only():
        for module in modules:
            module.torch = _TorchTrustedLoad(module.torch)


# --- scipy >= 1.12: dok_matrix._update ---------------------------------------------------------------


def _dok_update(self: Any, data: Any) -> None:
    """The unchecked bulk insert of scipy < 1.12: RecBole passes a dict of (row, col) -> value."""
    self._dict.update(data)


def shim_dok_update() -> None:
    """scipy >= 1.12 dropped dok_matrix._update, which LightGCN/NGCF/GCMC/NCL/SpectralCF/KGIN/MCCLK use to build A."""
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update") or not hasattr(sp.dok_matrix((1, 1)), "_dict"):
        return
    sp.dok_matrix._update = _dok_update


# --- RecBole 1.2.1's Collector.get_data_struct ---------------------------------------------------------


def _get_data_struct(self: Any) -> Any:
    """Collector.get_data_struct, moving only the tensors to the CPU (``data.*`` entries are ints and Counters)."""
    import torch

    data = self.data_struct._data_dict
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            data[key] = value.cpu()
    returned_struct = copy.deepcopy(self.data_struct)
    for key in ["rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label"]:
        if key in self.data_struct:
            del self.data_struct[key]
    return returned_struct


def shim_collector_data_struct() -> None:
    """Collector.get_data_struct calls .cpu() on every entry, so the int/Counter ``data.*`` ones crash ItemCoverage etc."""
    from recbole.evaluator import collector

    probe = collector.Collector.__new__(collector.Collector)
    probe.data_struct = collector.DataStruct()
    probe.data_struct.set("data.num_items", 1)
    try:
        probe.get_data_struct()
    except AttributeError:
        collector.Collector.get_data_struct = _get_data_struct


# --- lightgbm / xgboost: optional, but imported by recbole.model.exlib_recommender --------------------

_EXLIB = "recbole.model.exlib_recommender"
_EXLIB_BACKENDS: dict[str, str] = {"lightgbm": "LightGBM", "xgboost": "XGBoost"}


def shim_exlib_optional_backends() -> None:
    """RecBole's exlib package imports lightgbm and xgboost (not its requirements), and ``get_model`` imports that
    package for every name it finds nowhere else: an unknown model name dies on the import. Import the package now,
    with the backends that are installed."""
    installed = [name for name in _EXLIB_BACKENDS if importlib.util.find_spec(name) is not None]
    if _EXLIB in sys.modules or len(installed) == len(_EXLIB_BACKENDS):
        return
    spec = importlib.util.find_spec(_EXLIB)
    package = importlib.util.module_from_spec(spec)
    sys.modules[_EXLIB] = package
    try:
        spec.loader.exec_module(package)
    except ModuleNotFoundError as exc:
        if exc.name not in _EXLIB_BACKENDS:
            del sys.modules[_EXLIB]
            raise
    setattr(sys.modules["recbole.model"], "exlib_recommender", package)
    for backend in installed:
        class_name = _EXLIB_BACKENDS[backend]
        setattr(package, class_name, getattr(importlib.import_module(f"{_EXLIB}.{backend}"), class_name))


def apply() -> None:
    """Apply every shim this stack needs; safe to call more than once."""
    shim_numpy_aliases()
    shim_torch_load()
    shim_dok_update()
    shim_collector_data_struct()
    shim_exlib_optional_backends()

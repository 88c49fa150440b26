"""Shims that let RecBole 1.2.1 run on today's stack (numpy 2, torch >= 2.6, scipy >= 1.12, setuptools >= 81).

Every shim detects its own problem and does nothing on a stack that does not have it. Shims aimed at
a RecBole module run when that module is first imported (or at once, if it already is), so ``apply()``
imports neither RecBole nor torch. ``apply()`` is idempotent.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.abc
import importlib.machinery
import io
import pickle
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ContextManager

__all__ = [
    "apply",
    "shim_numpy_aliases",
    "shim_torch_load",
    "shim_dok_update",
    "shim_collector_data_struct",
    "shim_quick_start_ray",
    "shim_exlib_optional_backends",
    "TORCH_LOAD_MODULES",
]

Hook = Callable[[types.ModuleType], None]
Around = Callable[[types.ModuleType], ContextManager[None]]  # entered around the module's execution

# RecBole 1.2.1 modules that call a module-level ``torch.load`` on files RecBole wrote (checkpoints, pretrained
# models). recbole.quick_start.quick_start imports torch inside load_data_and_model; it is handled on its own.
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
# layers and datasets), with the same targets, so a later Config() re-assigns identical values.
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

_around: dict[str, list[Around]] = {}
_after: dict[str, list[Hook]] = {}


# --- running code when a RecBole module is imported -----------------------------------------------------


class _HookedLoader(importlib.abc.Loader):
    """Wraps a module's loader to run the registered hooks around its execution."""

    def __init__(self, loader: Any, fullname: str) -> None:
        self._loader = loader
        self._fullname = fullname

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        with contextlib.ExitStack() as stack:
            for hook in _around.get(self._fullname, []):
                stack.enter_context(hook(module))
            self._loader.exec_module(module)
        _around.pop(self._fullname, None)
        for hook in _after.pop(self._fullname, []):
            hook(module)


class _ImportHook(importlib.abc.MetaPathFinder):
    """Finds the modules that have hooks registered, through the other finders, and wraps their loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _around and fullname not in _after:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _ImportHook) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, fullname)
                return spec
        return None


def _when_imported(name: str, after: Hook | None = None, around: Around | None = None) -> None:
    """Run ``after(module)`` once ``name`` is imported (now, if it already is) and its execution inside ``around``."""
    module = sys.modules.get(name)
    if module is not None:
        if after is not None:
            after(module)
        return
    if not any(isinstance(finder, _ImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportHook())
    for hooks, hook in ((_around, around), (_after, after)):
        if hook is not None and hook not in hooks.setdefault(name, []):
            hooks[name].append(hook)


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


def _patch_config(module: types.ModuleType) -> None:
    import numpy as np

    if not all(name in vars(np) for name in ("float_", "complex_", "unicode_")):
        module.Config.compatibility_settings = _compatibility_settings


def shim_numpy_aliases() -> None:
    """numpy 2 removed np.float_ (so RecBole's Config() raises) and np.float/np.int/... (used by its metrics/layers)."""
    _set_numpy_aliases()
    _when_imported("recbole.config.configurator", _patch_config)


# --- torch >= 2.6: torch.load(weights_only=True) -------------------------------------------------------


class _LoadProbe:
    """A plain object that the weights-only unpickler refuses."""


_weights_only_default: bool | None = None


def _torch_load_defaults_to_weights_only() -> bool:
    """Whether torch.load refuses arbitrary pickles unless weights_only=False is passed (torch >= 2.6)."""
    global _weights_only_default
    if _weights_only_default is None:
        import torch

        buffer = io.BytesIO()
        torch.save({"probe": _LoadProbe()}, buffer)
        buffer.seek(0)
        try:
            torch.load(buffer)
        except pickle.UnpicklingError:
            _weights_only_default = True
        else:
            _weights_only_default = False
    return _weights_only_default


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


def _patch_torch_load(module: types.ModuleType) -> None:
    torch_module = module.__dict__.get("torch")
    if not isinstance(torch_module, types.ModuleType) or isinstance(torch_module, _TorchTrustedLoad):
        return
    if _torch_load_defaults_to_weights_only():
        module.torch = _TorchTrustedLoad(torch_module)


def _patch_load_data_and_model(module: types.ModuleType) -> None:
    original = module.load_data_and_model
    if getattr(original, "_lrgd_compat", False) or not _torch_load_defaults_to_weights_only():
        return

    @functools.wraps(original)
    def load_data_and_model(model_file: str) -> tuple[Any, ...]:
        # RecBole 1.2.1's body but for weights_only=False: it imports torch inside the function, so
        # swapping the module's ``torch`` cannot reach it.
        import torch

        checkpoint = torch.load(model_file, weights_only=False)
        config = checkpoint["config"]
        module.init_seed(config["seed"], config["reproducibility"])
        module.init_logger(config)
        logger = module.getLogger()
        logger.info(config)

        dataset = module.create_dataset(config)
        logger.info(dataset)
        train_data, valid_data, test_data = module.data_preparation(config, dataset)

        module.init_seed(config["seed"], config["reproducibility"])
        model = module.get_model(config["model"])(config, train_data._dataset).to(config["device"])
        model.load_state_dict(checkpoint["state_dict"])
        model.load_other_parameter(checkpoint.get("other_parameter"))

        return config, model, dataset, train_data, valid_data, test_data

    load_data_and_model._lrgd_compat = True  # type: ignore[attr-defined]
    module.load_data_and_model = load_data_and_model
    package = sys.modules.get("recbole.quick_start")  # it re-exports the function once it has finished importing
    if package is not None and getattr(package, "load_data_and_model", None) is original:
        package.load_data_and_model = load_data_and_model


def shim_torch_load() -> None:
    """torch >= 2.6 loads with weights_only=True, which refuses RecBole's own checkpoints (they pickle its Config)."""
    for name in TORCH_LOAD_MODULES:
        _when_imported(name, _patch_torch_load)
    _when_imported("recbole.quick_start.quick_start", _patch_load_data_and_model)


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


def _patch_collector(module: types.ModuleType) -> None:
    probe = module.Collector.__new__(module.Collector)
    probe.data_struct = module.DataStruct()
    probe.data_struct.set("data.num_items", 1)
    try:
        probe.get_data_struct()
    except AttributeError:
        module.Collector.get_data_struct = _get_data_struct


def shim_collector_data_struct() -> None:
    """Collector.get_data_struct calls .cpu() on every entry, so the int/Counter ``data.*`` ones crash ItemCoverage etc."""
    _when_imported("recbole.evaluator.collector", _patch_collector)


# --- ray: recbole.quick_start does `from ray import tune` at import ------------------------------------


class _LazyTune(types.ModuleType):
    """Stands in for ``ray.tune`` in recbole.quick_start: imports the real one (raising its error) on first use."""

    def __init__(self) -> None:
        super().__init__("ray.tune", "ray.tune, imported on first attribute access.")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module("ray.tune"), name)


def _ray_tune_importable() -> bool:
    """Try to import ray.tune; on failure drop the half-imported ray modules it leaves behind."""
    before = set(sys.modules)
    try:
        importlib.import_module("ray.tune")
    except Exception:  # ImportError (pkg_resources), AttributeError (np.bool8), or whatever else ray trips on
        for name in set(sys.modules) - before:
            if name == "ray" or name.startswith("ray."):
                del sys.modules[name]
        return False
    return True


@contextlib.contextmanager
def _deferred_ray_tune(module: types.ModuleType) -> Iterator[None]:
    """While recbole.quick_start executes, a broken ray is replaced by a placeholder whose ``tune`` is lazy."""
    if _ray_tune_importable():
        yield
        return
    placeholder = types.ModuleType("ray", "Placeholder for recbole.quick_start's `from ray import tune`.")
    placeholder.tune = _LazyTune()  # type: ignore[attr-defined]
    sys.modules["ray"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("ray") is placeholder:
            del sys.modules["ray"]


def shim_quick_start_ray() -> None:
    """recbole.quick_start imports ray.tune, which on ray 2.6 needs pkg_resources (gone in setuptools >= 81) and np.bool8."""
    _when_imported("recbole.quick_start.quick_start", around=_deferred_ray_tune)


# --- lightgbm / xgboost: optional, but imported by recbole.model.exlib_recommender --------------------

_EXLIB_BACKENDS: dict[str, str] = {"lightgbm": "LightGBM", "xgboost": "XGBoost"}


@contextlib.contextmanager
def _without_missing_backends(package: types.ModuleType) -> Iterator[None]:
    """Let the exlib package import with the backends that are installed instead of failing on a missing one."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name not in _EXLIB_BACKENDS:
            raise
        for backend, class_name in _EXLIB_BACKENDS.items():
            try:
                submodule = importlib.import_module(f"{package.__name__}.{backend}")
            except ModuleNotFoundError as missing:
                if missing.name != backend:
                    raise
            else:
                setattr(package, class_name, getattr(submodule, class_name))


def shim_exlib_optional_backends() -> None:
    """RecBole's exlib package imports lightgbm/xgboost (not its requirements): unknown model names die on that import."""
    _when_imported("recbole.model.exlib_recommender", around=_without_missing_backends)


def apply() -> None:
    """Apply every shim this stack needs; safe to call more than once."""
    shim_numpy_aliases()
    shim_torch_load()
    shim_dok_update()
    shim_collector_data_struct()
    shim_quick_start_ray()
    shim_exlib_optional_backends()

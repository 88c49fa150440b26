"""RecBole checkpoints that a run names (``candidate_source``, ``prior_model``): read once per file version and
checked before anything is written (``validate``), so a wrong file is one ``LRGDError`` line."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Dict

import torch

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.model_names import did_you_mean, recbole_model

if TYPE_CHECKING:
    from recbole.config import Config


def is_checkpoint(source: str) -> bool:
    """Whether a ``candidate_source`` (or ``prior_model``) names a checkpoint file rather than a model."""
    return str(source).endswith(".pth")


@lru_cache(maxsize=2)
def _checkpoint(path: str, mtime: float) -> Dict[str, Any]:
    """A RecBole checkpoint, read once per file version (its model name is needed before the run starts)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # it pickles RecBole's Config
    except Exception as exc:  # a truncated or foreign file: torch raises several types
        raise LRGDError(f"candidate_source {path} is not a RecBole checkpoint ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise LRGDError(f"candidate_source {path} is not a RecBole checkpoint (no config and state_dict)")
    return checkpoint


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The checkpoint at ``path`` (``torch.load`` on the CPU), an ``LRGDError`` when it is not RecBole's."""
    return _checkpoint(os.path.abspath(path), os.path.getmtime(path))


def source_model(source: str) -> str:
    """The RecBole model of a ``candidate_source``: the name itself, or the model its checkpoint holds."""
    return str(read_checkpoint(source)["config"]["model"]) if is_checkpoint(source) else str(source)


def check_source(config: Config, key: str) -> None:
    """``config[key]`` (``candidate_source``, ``prior_model``) names a model LRGD can use: ~, a RecBole model, or a
    checkpoint of this dataset (one ``LRGDError``). Its type is its settings field's rule (``validate.check_values``)."""
    source = config[key]
    if source is None:
        return
    if is_checkpoint(source):
        if not os.path.isfile(source):
            raise LRGDError(f"{key} {source} does not exist (a RecBole checkpoint .pth)")
        checkpoint_dataset = read_checkpoint(source)["config"]["dataset"]
        if checkpoint_dataset != config["dataset"]:
            raise LRGDError(f"{key} {source} was trained on {checkpoint_dataset!r}, not {config['dataset']!r}")
        return
    if recbole_model(source, key) is None:
        raise LRGDError(f"{key} {source!r} is neither a RecBole model name (Pop, BPR, SASRec...) "
                        f"nor a checkpoint .pth{did_you_mean(source)}")

"""Where the plugin's YAML defaults (``properties/``) are, and which of them a run loads.

``properties/`` sits at the repository root and ships inside the wheel as ``recbole_lrgd/properties``
(setup.cfg maps the one onto the other). A normal install reads the packaged copy through
``importlib.resources``; an editable install or a source checkout has no packaged copy and reads the
folder beside the package. Running on RecBole's defaults because a file did not ship would silently
change the protocol, so a file the plugin expects but cannot find is an ``LRGDError``:

* ``overall.yaml`` always, and ``model/<model>.yaml`` for the plugin's own models;
* ``dataset/<dataset>.yaml`` for a dataset the plugin ships one for. In a normal install the shipped
  set is the install's own record of its files (RECORD), so a recorded file missing on disk is a
  broken install. A dataset the plugin has no file for (a user's own) runs on RecBole's defaults
  below ``overall.yaml``. In a source checkout the folder is the shipped set, and tests check that
  the wheel holds every file of it.
"""
from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path
from typing import Any, Dict, List, Set

import yaml

from recbole_lrgd.errors import LRGDError

DISTRIBUTION = "recbole_lrgd"


def properties_dir() -> Path:
    """The packaged ``recbole_lrgd/properties``, else (editable install, source checkout) the
    repository's ``properties/``."""
    packaged = resources.files("recbole_lrgd") / "properties"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "properties").is_dir():
        return root / "properties"
    raise LRGDError(f"broken install: the plugin's YAML defaults are not in {packaged} (reinstall recbole_lrgd)")


def shipped_defaults(name: str) -> Dict[str, Any]:
    """The keys and defaults of one of the plugin's YAML files, e.g. ``overall.yaml`` or ``model/LRGD.yaml``."""
    with open(properties_dir() / name, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def recorded_datasets(folder: Path) -> Set[str]:
    """Names of the dataset YAMLs the installer recorded in ``folder``; empty for a source checkout."""
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return set()
    folder = folder.resolve()
    return {f.stem for f in files if f.suffix == ".yaml" and Path(f.locate()).resolve().parent == folder}


def run_properties(model: str, dataset: str, plugin_model: bool) -> List[str]:
    """The YAML files of a run in RecBole's order (overall, model, dataset); an expected one that is
    missing is an ``LRGDError``."""
    root = properties_dir()
    model_file, dataset_file = root / "model" / f"{model}.yaml", root / "dataset" / f"{dataset}.yaml"
    files = [root / "overall.yaml"]
    if plugin_model or model_file.is_file():
        files.append(model_file)
    if dataset_file.is_file() or dataset in recorded_datasets(dataset_file.parent):
        files.append(dataset_file)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise LRGDError(f"broken install: missing {', '.join(missing)} (the plugin's defaults; reinstall recbole_lrgd)")
    return [str(f) for f in files]

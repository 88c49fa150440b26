"""The optimizer's state on disk: pool scores, chosen set, objective history (spec section 5).

Written atomically after every unit of work, so an interrupted fit resumes where it stopped, and
kept beside RecBole's checkpoints, so a later run on new interactions warm-starts from it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Optional

import numpy as np


def digest(obj: Any) -> str:
    """A stable hash of a JSON-able object."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(sequences: Dict[int, np.ndarray]) -> str:
    """A hash of the training sequences: new interactions give a new fingerprint."""
    h = hashlib.sha1()
    for user in sorted(sequences):
        h.update(np.asarray([user, -1, *sequences[user]], dtype=np.int64).tobytes())
    return h.hexdigest()


def load_state(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The saved state, or None when there is none or it cannot be read (then the fit starts afresh)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def save_state(path: Optional[str], state: Dict[str, Any]) -> None:
    """Write the state atomically (a reader never sees half a file)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)

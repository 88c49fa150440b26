"""A stable hash of a JSON-able object: the identity of saved work (an optimizer state, a trained retriever)."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(obj: Any, algorithm: str = "sha1") -> str:
    """The hex hash (``hashlib``'s ``algorithm``) of ``obj`` as sorted-key JSON (other values as their ``str``)."""
    return hashlib.new(algorithm, json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

"""The optimizer's state on disk: pool scores, chosen set, objective history.

Written atomically after every unit of work, so an interrupted fit resumes where it stopped, and
kept beside RecBole's checkpoints, so a later run on new interactions warm-starts from it. Its
identity holds everything that changes a score, so a state is reused only where its scores would
come out the same.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from recbole_lrgd.llm.loader import llm_device
from recbole_lrgd.llm.score_cache import model_identity, quarantine
from recbole_lrgd.whole_file import write_whole

logger = logging.getLogger(__name__)

# config keys that change an LLM score besides the model itself (whose identity, with the resolved
# dtype and the device type, comes from score_cache.model_identity); batch sizes and the device map
# only regroup the same computation, and the optimizer's own keys (seed included) are its settings
SCORE_KEYS = ("scorer_mode", "max_his_len", "max_prompt_tokens", "max_title_tokens", "prompt_instruction",
              "list_candidates", "title_field", "max_new_tokens", "title_match_threshold", "title_score",
              "title_score_tokens", "demo_format", "demo_negatives")
STATE_KEYS = ("identity", "data", "pool_scores", "stage1", "stage2", "history")  # a readable state has these


def score_context(config: Mapping[str, Any]) -> Dict[str, Any]:
    """What besides the optimizer's settings decides its scores: the model's identity (the score
    cache's own), the dataset and ``SCORE_KEYS`` (a key the config lacks counts as unset)."""
    model_id = model_identity(config["llm_path"], config["llm_dtype"], llm_device(config))
    return {"model": model_id, "dataset": config["dataset"], **{k: config[k] for k in SCORE_KEYS}}


def data_fingerprint(sequences: Dict[int, np.ndarray], titles: Optional[Sequence[str]] = None) -> str:
    """A hash of the training sequences and the item titles: new interactions (or retitled items)
    give a new fingerprint."""
    h = hashlib.sha1()
    for user in sorted(sequences):
        h.update(np.asarray([user, -1, *sequences[user]], dtype=np.int64).tobytes())
    for title in titles or ():
        h.update(str(title).encode("utf-8") + b"\0")
    return h.hexdigest()


def load_state(path: Optional[str], set_aside: bool = True) -> Optional[Dict[str, Any]]:
    """The saved state, or None when there is none. A file that cannot be read as a state is moved
    to ``*.corrupt`` with a warning (by the process that writes the state: ``set_aside``)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else ["a JSON object"]
        if missing:
            raise ValueError(f"not an optimizer state: no {', '.join(missing)}")
    except (OSError, ValueError) as exc:
        if set_aside:
            try:
                quarantine(path)
                where = f"moved to {path}.corrupt"
            except OSError as move_exc:
                where = f"could not move it aside ({move_exc.strerror})"
            logger.warning(f"demonstration optimizer state {path} is unreadable ({exc}): {where}, starting afresh")
        return None
    return state


def save_state(path: Optional[str], state: Dict[str, Any]) -> None:
    """Write the state atomically (a reader never sees half a file)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_whole(path, json.dumps(state, indent=1, sort_keys=True))

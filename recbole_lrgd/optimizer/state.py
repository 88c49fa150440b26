"""The optimizer's state: pool scores, stage 1's set, stage 2's search, the objective history, the chosen set.

``OptimizerState`` is what the optimizer works on; ``to_json``/``from_json`` are the one place its file's
shape appears (JSON, keys sorted, users as string keys where the file has them). Written atomically after
every unit of work, so an interrupted fit resumes where it stopped, and kept beside RecBole's checkpoints, so
a later run on new interactions warm-starts from it. Its identity holds everything that changes a score, so
a state is reused only where its scores would come out the same.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from recbole_lrgd.data.demonstrations import Spec
from recbole_lrgd.digest import digest
from recbole_lrgd.llm.loader import llm_device
from recbole_lrgd.llm.model_identity import model_identity
from recbole_lrgd.optimizer.objective import Evaluation
from recbole_lrgd.settings import SCORE_KEYS
from recbole_lrgd.whole_file import quarantine, write_whole

logger = logging.getLogger(__name__)

STATE_KEYS = ("identity", "data", "pool_scores", "stage1", "stage2", "history")  # a readable state has these


def score_context(config: Mapping[str, Any]) -> Dict[str, Any]:
    """What besides the optimizer's settings decides its scores: the model's identity (the score
    cache's own), the dataset and ``settings.SCORE_KEYS``: the keys whose settings field changes every score."""
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


def plain_context(context: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``context`` as its JSON reads back (keys sorted, other values as their ``str``): what a state records."""
    return json.loads(json.dumps(context or {}, sort_keys=True, default=str))


def state_identity(settings: Mapping[str, Any], context: Optional[Mapping[str, Any]]) -> str:
    """The digest that names a fit's state: ``settings`` (``OptimizerSettings.identity()``, the settings that
    decide its scores) and ``context`` (what else does: ``score_context``)."""
    return digest({"settings": settings, "context": plain_context(context)})


def _specs(rows: Sequence[Sequence[int]]) -> List[Spec]:
    return [(int(u), int(cut)) for u, cut in rows]


def _rows(specs: Sequence[Spec]) -> List[List[int]]:
    return [[int(u), int(cut)] for u, cut in specs]


def _scores_json(scores: Mapping[int, Evaluation]) -> Dict[str, Dict[str, Any]]:
    return {str(u): e.to_dict() for u, e in scores.items()}


def _scores(rows: Mapping[str, Mapping[str, Any]]) -> Dict[int, Evaluation]:
    return {int(u): Evaluation.from_dict(e) for u, e in rows.items()}


@dataclass
class ScoredSet:
    """A demonstration set and its evaluation; ``event`` says why the history holds it (stage 1's set has none)."""

    specs: List[Spec]
    evaluation: Evaluation
    event: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        event = {} if self.event is None else {"event": self.event}
        return {**event, "set": _rows(self.specs), **self.evaluation.to_dict()}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> "ScoredSet":
        return cls(_specs(entry["set"]), Evaluation.from_dict(entry), entry.get("event"))


@dataclass
class Stage2Search:
    """Stage 2's coordinate search: its set now, the best set seen whose Effect is not below zero (what the
    collapse guard reverts to), the moves made, the rejections since the last accepted one, and whether it ended."""

    current: List[Spec]
    best_safe: Optional[List[Spec]]
    step: int = 0
    rejected: int = 0
    done: bool = False

    def to_json(self) -> Dict[str, Any]:
        return {"step": self.step, "rejected": self.rejected, "current": _rows(self.current),
                "best_safe": None if self.best_safe is None else _rows(self.best_safe), "done": self.done}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> "Stage2Search":
        best = entry["best_safe"]
        return cls(_specs(entry["current"]), None if best is None else _specs(best), entry["step"],
                   entry["rejected"], entry["done"])


@dataclass
class OptimizerState:
    """One fit's state. ``identity`` (``state_identity``) and ``data`` (``data_fingerprint``) say which fit it is;
    ``settings`` and ``identity_context`` record what went into the identity. Users are pool user ids."""

    identity: str
    identity_context: Dict[str, Any]
    data: str
    settings: Dict[str, Any]
    probe_users: List[int]
    pool_users: List[int]
    pool_scores: Dict[int, Evaluation] = field(default_factory=dict)  # stage 1: each pool demonstration alone
    stage1: Optional[ScoredSet] = None  # stage 1's set (or the warm start's), once chosen
    stage2: Optional[Stage2Search] = None
    history: List[ScoredSet] = field(default_factory=list)  # each set taken on, in order
    warm_start_from: Optional[List[Spec]] = None  # the saved set on other data this fit started from
    warm_start_pool_scores: Dict[int, Evaluation] = field(default_factory=dict)  # that state's pool scores
    seconds: Dict[str, float] = field(default_factory=dict)  # per stage: wall, ``_process`` and ``stage1_demos``
    zero_shot: Optional[List[list]] = None  # the probes' zero-shot scores (``ProbeEffect.kept_zero_shot``)
    chosen: Optional[List[Spec]] = None  # the final set, once the fit has ended

    def belongs_to(self, identity: str, data: str) -> bool:
        """Whether this is the state of the fit with ``identity`` on ``data``."""
        return self.identity == identity and self.data == data

    def ranking_scores(self) -> Dict[int, Evaluation]:
        """The pool's single-demonstration scores stage 2 ranks its swaps by: this fit's, else the warm start's
        (measured on the old data: they only order the swaps)."""
        return self.pool_scores or self.warm_start_pool_scores

    def add_seconds(self, stage: str, wall: float, processes: int = 1) -> None:
        """Add ``wall`` seconds to ``stage`` and to ``<stage>_process``: what one process would have spent (wall x
        the processes that shared the work; work every process repeats counts once)."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + wall
        self.seconds[f"{stage}_process"] = self.seconds.get(f"{stage}_process", 0.0) + wall * processes

    def add_pool_demos(self, count: int) -> None:
        """Count pool demonstrations scored into stage 1's seconds (``stage1_demos``)."""
        self.seconds["stage1_demos"] = self.seconds.get("stage1_demos", 0) + count

    # -- the file's shape ------------------------------------------------------------------------
    def to_json(self) -> Dict[str, Any]:
        """The state as its file holds it (``seconds`` only once clocked, ``chosen`` only once chosen)."""
        out = {"identity": self.identity, "identity_context": self.identity_context, "data": self.data,
               "settings": self.settings, "probe_users": list(self.probe_users), "pool_users": list(self.pool_users),
               "pool_scores": _scores_json(self.pool_scores),
               "stage1": None if self.stage1 is None else self.stage1.to_json(),
               "stage2": None if self.stage2 is None else self.stage2.to_json(),
               "history": [h.to_json() for h in self.history],
               "warm_start_from": None if self.warm_start_from is None else _rows(self.warm_start_from),
               "warm_start_pool_scores": _scores_json(self.warm_start_pool_scores), "zero_shot": self.zero_shot}
        if self.seconds:
            out["seconds"] = dict(self.seconds)
        if self.chosen is not None:
            out["chosen"] = _rows(self.chosen)
        return out

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> "OptimizerState":
        """A state from its file's JSON; a value of the wrong shape raises ``KeyError``, ``TypeError`` or
        ``ValueError``."""
        missing = [k for k in STATE_KEYS if k not in saved]
        if missing:
            raise ValueError(f"not an optimizer state: no {', '.join(missing)}")
        stage1, stage2, start, chosen = (saved.get(k) for k in ("stage1", "stage2", "warm_start_from", "chosen"))
        return cls(identity=saved["identity"], identity_context=saved.get("identity_context", {}), data=saved["data"],
                   settings=saved.get("settings", {}), probe_users=list(saved.get("probe_users", [])),
                   pool_users=list(saved.get("pool_users", [])), pool_scores=_scores(saved["pool_scores"]),
                   stage1=None if stage1 is None else ScoredSet.from_json(stage1),
                   stage2=None if stage2 is None else Stage2Search.from_json(stage2),
                   history=[ScoredSet.from_json(h) for h in saved["history"]],
                   warm_start_from=None if start is None else _specs(start),
                   warm_start_pool_scores=_scores(saved.get("warm_start_pool_scores") or {}),
                   seconds=dict(saved.get("seconds") or {}), zero_shot=saved.get("zero_shot"),
                   chosen=None if chosen is None else _specs(chosen))


def load_state(path: Optional[str], set_aside: bool = True) -> Optional[OptimizerState]:
    """The saved state, or None when there is none. A file that cannot be read as a state is moved
    to ``*.corrupt`` with a warning (by the process that writes the state: ``set_aside``)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError("not an optimizer state: no a JSON object")
        return OptimizerState.from_json(saved)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        if set_aside:
            try:
                quarantine(path)
                where = f"moved to {path}.corrupt"
            except OSError as move_exc:
                where = f"could not move it aside ({move_exc.strerror})"
            logger.warning(f"demonstration optimizer state {path} is unreadable ({exc}): {where}, starting afresh")
        return None


def save_state(path: Optional[str], state: OptimizerState) -> None:
    """Write the state atomically (a reader never sees half a file)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_whole(path, json.dumps(state.to_json(), indent=1, sort_keys=True))

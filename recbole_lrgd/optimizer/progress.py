"""How a fit goes on from its state file: it resumes the state of the same fit (same identity and data),
warm-starts from one of the same identity on other data, else begins afresh; a finished fit is read back
as it is. The search (``two_stage.py``) works on the ``OptimizerState`` this hands it and saves it after
every unit of work (``state.save_state``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from logging import getLogger
from typing import Collection, Optional, Tuple

from recbole_lrgd.optimizer.state import OptimizerState, load_state

logger = getLogger()


@dataclass(frozen=True)
class StateFile:
    """One fit's state file: ``path`` (None: the state is kept nowhere), the fit's ``identity`` and ``data``
    (which saved state is its own), and whether this process writes the state (``writes``: the main one)."""

    path: Optional[str]
    identity: str
    data: str
    writes: bool = True

    def own(self, saved: Optional[OptimizerState]) -> bool:
        """Whether ``saved`` is this fit's state."""
        return saved is not None and saved.belongs_to(self.identity, self.data)

    def begin(self, fresh: OptimizerState, users: Collection[int], warm_start: bool) -> Tuple[OptimizerState, bool]:
        """The state the fit starts from, and whether it resumes a saved one. Else ``fresh``, warm-started when
        ``warm_start`` and the file holds a finished fit of the same identity on other data: its chosen set (those
        of its users still in ``users``) in ``warm_start_from``, and its stage-1 (pool) scores of those users in
        ``warm_start_pool_scores``. Those were measured on the old data, so stage 2 only ranks its swaps by them;
        every set is evaluated afresh. A file that is no state is set aside by the process that writes."""
        saved = load_state(self.path, set_aside=self.writes)
        if self.own(saved):
            logger.info(f"demonstration optimizer: resuming from {self.path}")
            return saved, True
        if saved is not None and saved.identity == self.identity and warm_start and saved.chosen:
            start = [s for s in saved.chosen if s[0] in users]
            if start:
                logger.info(f"demonstration optimizer: warm start from the saved set {start} (new data)")
                return replace(fresh, warm_start_from=start, warm_start_pool_scores={
                    u: e for u, e in saved.ranking_scores().items() if u in users}), False
        return fresh, False

    def finished(self, stages: int) -> Optional[OptimizerState]:
        """The saved state when it is this fit's and has finished ``stages``; else None. Reading it needs no lock
        (states are replaced whole) and changes nothing."""
        saved = load_state(self.path, set_aside=False)
        if not self.own(saved) or not saved.stage1:
            return None
        if stages >= 2 and not (saved.stage2 and saved.stage2.done):
            return None
        return saved

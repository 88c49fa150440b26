"""What LRGD's fit chose, as plain values: what ``run`` and the benchmark report, with no live object inside."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from recbole_lrgd.data.demonstrations import DemoChoice, Spec


@dataclass(frozen=True)
class FitResult:
    """The two-stage optimizer's result: the chosen set (a global set, or with ``per_user`` the library each user
    retrieves its nearest from), its objective and Effect on the probes, the wall seconds of each stage run
    (stage1, stage2; a resumed fit's include the earlier runs'), and the state file it is kept in."""

    chosen: Tuple[Spec, ...]
    per_user: bool
    objective: float
    effect: float
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    state_file: Optional[str] = None

    @property
    def choice(self) -> DemoChoice:
        return DemoChoice.chosen(self.chosen, self.per_user)

"""The optimizer's probe-scoring engine: Effect_D of demonstration sets on probe users, from prompts. Its loss
math is the EffectD metric's (``evaluator/effect.py``), so the optimizer and the metric measure one Effect."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from recbole_lrgd.data.demonstrations import DemoChoice, DemoItems
from recbole_lrgd.data.probes import Probe
from recbole_lrgd.evaluator.effect import effect_per_user, resolve_temperature


class ProbeEffect:
    """Effect_D on probe users (``data/probes.py``, their last training item the target): the one place it
    is computed from prompts, for the optimizer's objective and for ``probe_effects``.

    A probe never sees its own demonstration (it holds the answer). Zero-shot scores are scored once and
    kept: in likelihood mode a candidate's score does not depend on the others, so they are kept per
    (probe, candidate), and the first call scores every probe's candidates and ``extra_items`` (the
    optimizer's demonstration targets) in one fixed batch, which makes them the same in every process,
    whatever it scored before (exact sharding); in other modes per (probe, candidate list).
    """

    def __init__(self, ranker, probes: Sequence[Probe], temperature: Union[str, float],
                 extra_items: Sequence[int] = ()):
        self.ranker, self.probes, self.setting = ranker, list(probes), temperature
        self.extra_items = [int(i) for i in extra_items]
        self.per_item = ranker.scorer.mode == "likelihood"
        self._zero_shot: Dict[tuple, float] = {}
        self._temperature: Optional[float] = None

    @property
    def temperature(self) -> float:
        """``effect_temperature``, fitted on the probes' zero-shot scores when ``auto`` (scored lazily, so a
        finished optimizer state is reused without scoring)."""
        if self._temperature is None:
            zero_shot = None
            if self.setting == "auto":
                zero_shot = torch.as_tensor(np.stack(self.zero_shot([p.candidates for p in self.probes])))
            self._temperature = resolve_temperature(self.setting, zero_shot)
        return self._temperature

    def zero_shot(self, candidates: Sequence[Sequence[int]]) -> List[np.ndarray]:
        """Each probe's scores of its ``candidates[k]`` without demonstrations (memoised)."""
        pairs = [(p, tuple(int(i) for i in c)) for p, c in zip(self.probes, candidates)]
        if self.per_item and not self._zero_shot:  # the fixed first batch
            self._score_zero_shot([(p, tuple(dict.fromkeys([*map(int, p.candidates), *self.extra_items])))
                                   for p in self.probes])
        missing: Dict[tuple, Tuple[Probe, tuple]] = {}
        for p, c in pairs:
            if any(k not in self._zero_shot for k in self._zero_shot_keys(p, c)):
                missing.setdefault((p.user, c), (p, c))
        self._score_zero_shot(list(missing.values()))
        return [np.array([self._zero_shot[k] for k in self._zero_shot_keys(p, c)]) for p, c in pairs]

    def kept_zero_shot(self) -> Optional[List[list]]:
        """The zero-shot scores kept so far as JSON rows ``[probe user, item, score]`` (likelihood mode, where
        they are kept per candidate); None in other modes. An optimizer saves them with its state: a resumed
        fit restores them (``restore_zero_shot``) instead of scoring its long first batch again."""
        return [[u, i, s] for (u, i), s in self._zero_shot.items()] if self.per_item else None

    def restore_zero_shot(self, rows: Optional[Sequence[Sequence[float]]]) -> None:
        """Keep the zero-shot scores ``kept_zero_shot`` gave (of the same probes, model and prompts)."""
        if self.per_item and rows:
            self._zero_shot.update({(int(u), int(i)): float(s) for u, i, s in rows})

    def _zero_shot_keys(self, probe: Probe, candidates: tuple) -> List[tuple]:
        return [(probe.user, i) if self.per_item else (probe.user, candidates, i) for i in candidates]

    def _score_zero_shot(self, pairs: Sequence[Tuple[Probe, tuple]]) -> None:
        if pairs:
            for (p, c), scores in zip(pairs, self.score([(p, [], c) for p, c in pairs])):
                self._zero_shot.update(zip(self._zero_shot_keys(p, c), scores.tolist()))

    def score(self, rows: Sequence[Tuple[Probe, Sequence[DemoItems], Sequence[int]]]) -> List[np.ndarray]:
        """Scores of ``(probe, demonstrations, candidates)`` rows, all prompts in one batched call."""
        return self.ranker.score([self.ranker.prompt(p.user, p.history, c, d) for p, d, c in rows])

    def own_columns(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """(n_probes, C) of score rows: each probe's own C candidates (the first columns; columns after
        them, such as the optimizer's demonstration targets, are left out)."""
        return np.stack([r[: len(self.probes[0].candidates)] for r in rows])

    def per_probe(self, with_demos: Sequence[np.ndarray], zero_shot: Sequence[np.ndarray]) -> np.ndarray:
        """Per-probe Effect l_0 - l_D over the probes' own candidates."""
        with_demos, zero_shot = (torch.as_tensor(self.own_columns(rows)) for rows in (with_demos, zero_shot))
        return effect_per_user(with_demos, zero_shot, self.temperature).numpy()

    def of(self, choice: DemoChoice) -> np.ndarray:
        """Per-probe Effect of the demonstrations ``choice`` gives each probe."""
        candidates = [p.candidates for p in self.probes]
        policy = self.ranker.policy(choice)
        rows = [(p, policy.demonstrations(p.user, p.history, probe=True), c)
                for p, c in zip(self.probes, candidates)]
        return self.per_probe(self.score(rows), self.zero_shot(candidates))


def probe_effects(ranker: Any, probes: Sequence[Probe], demo_users: Sequence[int],
                  temperature: Union[str, float]) -> np.ndarray:
    """Per-probe Effect of one global set of pool users' demonstrations, scored by ``ranker`` (an ``ICLRanker``)."""
    return ProbeEffect(ranker, probes, temperature).of(DemoChoice.chosen([(u, 0) for u in demo_users], False))


def single_demonstration_effects(ranker: Any, probes: Sequence[Probe], pool_users: Sequence[int],
                                 temperature: Union[str, float]) -> List[np.ndarray]:
    """The per-probe Effect of each pool user's demonstration alone (what the optimizer's stage 1 ranks)."""
    effect = ProbeEffect(ranker, probes, temperature)
    return [effect.of(DemoChoice.chosen([(u, 0)], False)) for u in pool_users]

"""The regularised objective of a demonstration set, from probe scores (pure functions; the per-probe
Effect itself is ``optimizer.probe_effect.ProbeEffect``'s).

    objective = robust Effect - lambda_redundancy * redundancy - lambda_copy * copy - lambda_reg * drift
    robust Effect = mean - lambda_std * std   over the clean set and its P perturbed copies

Scores are (n_probes, C) arrays with the probe's target in column 0; copy bias is measured on extra
columns holding the demonstrations' own targets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import torch


def robust_effect(effects: Sequence[float], lambda_std: float) -> float:
    """mean - lambda_std * std of the Effect of the clean set and its perturbed copies."""
    values = np.asarray(effects, dtype=np.float64)
    return float(values.mean() - lambda_std * (values.std() if len(values) > 1 else 0.0))


def redundancy(item_sets: Sequence[Sequence[int]]) -> float:
    """Mean pairwise Jaccard overlap of the demonstrations' items (history + target); 0 for one."""
    sets = [set(int(i) for i in s) for s in item_sets]
    pairs = [len(a & b) / max(1, len(a | b)) for a, b in combinations(sets, 2)]
    return float(np.mean(pairs)) if pairs else 0.0


def _probs(scores: np.ndarray, temperature: float) -> np.ndarray:
    return torch.softmax(torch.as_tensor(scores, dtype=torch.float64) / temperature, -1).numpy()


def copy_bias(with_demos: np.ndarray, zero_shot: np.ndarray, n_extra: Sequence[int], temperature: float) -> float:
    """Mean over probes of the probability mass the demonstrations move onto their own targets.

    ``n_extra[u]`` is how many of row u's last columns are demonstration targets (rows may be
    padded with -inf). Only the increase over zero-shot counts: a popular target is not a copy.
    """
    gains = []
    for row_d, row_0, n in zip(with_demos, zero_shot, n_extra):
        if n:
            gains.append(_probs(row_d, temperature)[-n:].sum() - _probs(row_0, temperature)[-n:].sum())
    return float(max(0.0, np.mean(gains))) if gains else 0.0


def drift(with_demos: np.ndarray, zero_shot: np.ndarray, temperature: float) -> float:
    """Mean KL(zero-shot || with demonstrations) of the ranking distribution over the candidates."""
    p0, pd = _probs(zero_shot, temperature), _probs(with_demos, temperature)
    return float(np.mean(np.sum(p0 * (np.log(p0 + 1e-300) - np.log(pd + 1e-300)), -1)))


@dataclass
class Evaluation:
    """What the optimizer knows of one demonstration set on the probe set."""

    effect: float  # clean Effect_D (mean over probes)
    robust: float  # mean - lambda_std * std over clean + perturbed copies
    redundancy: float
    copy: float
    drift: float
    objective: float
    effects: tuple = ()  # clean + perturbed Effect values

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["effects"] = list(self.effects)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Evaluation":
        """The evaluation ``to_dict`` gave, from a mapping that may hold other keys too (a state's entry)."""
        kept = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        kept["effects"] = tuple(kept.get("effects", ()))
        return cls(**kept)


def combine(effects: Sequence[float], redundancy_value: float, copy_value: float, drift_value: float,
            lambdas: Dict[str, float]) -> Evaluation:
    """The regularised objective (bigger is better) from its parts."""
    robust = robust_effect(effects, lambdas["std"])
    objective = (robust - lambdas["redundancy"] * redundancy_value - lambdas["copy"] * copy_value
                 - lambdas["reg"] * drift_value)
    return Evaluation(float(effects[0]), robust, redundancy_value, copy_value, drift_value, float(objective),
                      tuple(float(e) for e in effects))

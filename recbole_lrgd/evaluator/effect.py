"""Effect_D: how much a demonstration set lowers the listwise loss of the user's true next item.

    l_D(u)   = -log softmax_c( s(c | P(D, u, C_u)) / T )[target]
    Effect_D = mean_u [ l_0(u) - l_D(u) ]        (l_0: the same prompt with no demonstrations)

In the dual-model view (docs/theory.md) the demonstrations are the dual model's training data, and
a positive effect means the gradient step they induce lowers its test loss.

This module is the RecBole metric and its loss math; the optimizer measures the same Effect on its probe
users from prompts (``optimizer/probe_effect.py``).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
from recbole.evaluator.base_metric import AbstractMetric
from recbole.utils import EvaluatorType

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.evaluator.collector import DataStruct


logger = logging.getLogger(__name__)

EFFECT_KEY = "lrgd.effect"  # (n_users, 2, C): [with demonstrations, zero-shot] scores, the target in column 0


def listwise_loss(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-user cross-entropy of the target (column 0) under a softmax over the candidates."""
    return -torch.log_softmax(scores.double() / temperature, dim=-1)[..., 0]


def fit_temperature(scores: torch.Tensor, low: float = 1e-2, high: float = 1e2, steps: int = 60) -> float:
    """The temperature that minimises the mean listwise loss of ``scores`` (golden-section search on log T).

    Raw title log-likelihoods can be over-spread (a loss above ln|C| while the ranking beats random);
    fitting T on the zero-shot scores makes Effect_D measure ranking gains, not score scale.
    """
    f = lambda log_t: listwise_loss(scores, float(np.exp(log_t))).mean().item()  # noqa: E731
    a, b = np.log(low), np.log(high)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(steps):
        if f(c) < f(d):
            b, d = d, c
            c = b - g * (b - a)
        else:
            a, c = c, d
            d = a + g * (b - a)
    return float(np.exp((a + b) / 2))


def effect_per_user(with_demos: torch.Tensor, zero_shot: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """l_0(u) - l_D(u) for each user; both score tensors have the target in column 0."""
    return listwise_loss(zero_shot, temperature) - listwise_loss(with_demos, temperature)


def resolve_temperature(setting: Union[str, float], zero_shot: Optional[torch.Tensor]) -> float:
    """``effect_temperature``: a number, or ``auto`` to fit it on the zero-shot scores."""
    return fit_temperature(zero_shot) if setting == "auto" else float(setting)


def target_first(scores: Sequence[float], target_index: int) -> np.ndarray:
    """Reorder a user's candidate scores so the target comes first (the layout this module uses)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.concatenate([scores[target_index: target_index + 1], np.delete(scores, target_index)])


class EffectD(AbstractMetric):
    """RecBole metric ``EffectD`` (bigger is better), with the result key ``effectd_pos``, the share of users helped.

    Computed in the same evaluation pass from the scores LRGD produced with and without its
    demonstrations (collected by ``LRGDCollector``).
    """

    metric_type = EvaluatorType.RANKING
    metric_need = [EFFECT_KEY]
    smaller = False

    def __init__(self, config: Config):
        super().__init__(config)
        self.temperature = config["effect_temperature"]

    def calculate_metric(self, dataobject: DataStruct) -> dict:
        if EFFECT_KEY not in dataobject:
            logger.warning("EffectD: no with/without-demonstration scores were recorded in this evaluation (they "
                           "come from LRGDTrainer's evaluation of LRGD), so effectd and effectd_pos are NaN")
            return {"effectd": float("nan"), "effectd_pos": float("nan")}
        scores = dataobject.get(EFFECT_KEY).double()
        temperature = resolve_temperature(self.temperature, scores[:, 1])
        effect = effect_per_user(scores[:, 0], scores[:, 1], temperature)
        return {"effectd": round(effect.mean().item(), self.decimal_place),
                "effectd_pos": round((effect > 0).double().mean().item(), self.decimal_place)}

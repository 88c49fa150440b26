"""RecBole Collectors that keep what RecBole's own evaluation computed, per user.

``PerUserCollector`` keeps each evaluated user's top-k metric values (Hit@k, NDCG@k, MRR@k...), read
from RecBole's own ``rec.topk`` rows by RecBole's own metric classes: ties count exactly as RecBole
counts them (``torch.topk`` over the padded score matrix, whose order among equal scores is the
kernel's, neither the lowest item id nor the candidate order), and the users' mean is RecBole's
reported value. ``LRGDCollector`` also collects LRGD's with/without-demonstration scores for EffectD.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np
import torch
from recbole.evaluator import Collector
from recbole.evaluator.base_metric import TopkMetric
from recbole.evaluator.register import metrics_dict

from recbole_lrgd.data.chunks import user_rows
from recbole_lrgd.evaluator.effect import EFFECT_KEY, target_first

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.interaction import Interaction
    from recbole.evaluator.collector import DataStruct
    from recbole.trainer import AbstractTrainer


class PerUserCollector(Collector):
    """RecBole's Collector, plus the per-user top-k metric values of the last evaluation."""

    def __init__(self, config: Config):
        super().__init__(config)
        self._users: List[int] = []  # the evaluated users, one per row of the score matrices so far
        self._last = None  # (users, data struct) of the last finished evaluation

    @classmethod
    def install(cls, trainer: AbstractTrainer) -> None:
        """Give a RecBole trainer this collector in place of RecBole's plain one."""
        if type(getattr(trainer, "eval_collector", None)) is Collector:
            trainer.eval_collector = cls(trainer.config)

    def eval_batch_collect(self, scores_tensor: torch.Tensor, interaction: Interaction, positive_u: torch.Tensor,
                           positive_i: torch.Tensor) -> None:
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        # a ranking batch has one score row per user, in the order of the users' first rows
        users = [user for user, _ in user_rows(interaction[self.config["USER_ID_FIELD"]].cpu().numpy())]
        if scores_tensor.dim() == 2 and len(users) == scores_tensor.shape[0]:
            self._users += users
        else:
            self._users.append(None)  # rows not one per user: no per-user values for this evaluation

    def get_data_struct(self) -> DataStruct:
        struct = super().get_data_struct()  # called once at the end of every evaluation
        self._last, self._users = (self._users, struct), []
        return struct

    def per_user_metrics(self) -> Dict[str, Dict[int, float]]:
        """``{"ndcg@10": {user id: value}, ...}`` for every top-k metric of the last evaluation (the
        test, after ``trainer.evaluate``); empty when it had none or its rows were not one per user."""
        if self._last is None:
            return {}
        users, struct = self._last
        if "rec.topk" not in struct or None in users or len(users) != len(struct.get("rec.topk")):
            return {}
        out: Dict[str, Dict[int, float]] = {}
        for name in self.config["metrics"]:
            metric_cls = metrics_dict.get(name.lower())
            if metric_cls is None or not issubclass(metric_cls, TopkMetric):
                continue
            matrix = _per_user_values(metric_cls(self.config), struct)
            for k in self.topk:
                out[f"{name.lower()}@{k}"] = dict(zip(users, np.asarray(matrix[:, k - 1], dtype=np.float64).tolist()))
        return out


def _per_user_values(metric: TopkMetric, struct) -> np.ndarray:
    """The users x max(topk) matrix a RecBole top-k metric averages, from its own ``used_info`` and
    ``metric_info`` (as its ``calculate_metric`` computes it; Hit, MRR and Precision read no ``pos_len``)."""
    pos_index, pos_len = metric.used_info(struct)
    takes_len = len(inspect.signature(metric.metric_info).parameters) == 2
    return metric.metric_info(pos_index, pos_len) if takes_len else metric.metric_info(pos_index)


class LRGDCollector(PerUserCollector):
    """Also collects, for EffectD, LRGD's scores with and without demonstrations, which the trainer hands
    over with each batch; the label is read here, never by the model."""

    @property
    def needs_zero_shot(self) -> bool:
        """Whether a metric (EffectD) needs the scores without demonstrations."""
        return self.register.need(EFFECT_KEY)

    def eval_batch_collect(self, scores_tensor: torch.Tensor, interaction: Interaction, positive_u: torch.Tensor,
                           positive_i: torch.Tensor, effect_scores: Optional[Tuple[np.ndarray, np.ndarray]] = None
                           ) -> None:
        """RecBole's collection, and ``effect_scores``: (with demonstrations, zero-shot) float64 scores of
        the batch's rows."""
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if not self.needs_zero_shot or effect_scores is None:
            return
        with_demos, zero_shot = effect_scores
        users = interaction[self.config["USER_ID_FIELD"]].cpu().numpy()
        labels = interaction[self.config["LABEL_FIELD"]].cpu().numpy()
        rows = []
        for _, block in user_rows(users):
            target = int(np.flatnonzero(labels[block] > 0)[0])
            rows.append(np.stack([target_first(with_demos[block], target), target_first(zero_shot[block], target)]))
        self.data_struct.update_tensor(EFFECT_KEY, torch.from_numpy(np.stack(rows)))

    def get_data_struct(self) -> DataStruct:
        struct = super().get_data_struct()
        if EFFECT_KEY in self.data_struct:
            del self.data_struct[EFFECT_KEY]
        return struct

"""A RecBole Collector that also gathers LRGD's with/without-demonstration scores for EffectD."""
from __future__ import annotations

import numpy as np
import torch
from recbole.evaluator import Collector

from recbole_lrgd.evaluator.effect import EFFECT_KEY, target_first


class LRGDCollector(Collector):
    """Reads the scores the model recorded during ``predict``; the label is read here, never by the model."""

    def __init__(self, config, model):
        super().__init__(config)
        self.model = model

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        records = self.model.pop_effect_records()
        if not self.register.need(EFFECT_KEY) or not records:
            return
        with_demos = np.concatenate([r[0] for r in records])
        zero_shot = np.concatenate([r[1] for r in records])
        users = interaction[self.config["USER_ID_FIELD"]].cpu().numpy()
        labels = interaction[self.config["LABEL_FIELD"]].cpu().numpy()
        rows = []
        for user in dict.fromkeys(users.tolist()):
            block = np.flatnonzero(users == user)
            target = int(np.flatnonzero(labels[block] > 0)[0])
            rows.append(np.stack([target_first(with_demos[block], target), target_first(zero_shot[block], target)]))
        self.data_struct.update_tensor(EFFECT_KEY, torch.from_numpy(np.stack(rows)))

    def get_data_struct(self):
        struct = super().get_data_struct()
        if EFFECT_KEY in self.data_struct:
            del self.data_struct[EFFECT_KEY]
        return struct

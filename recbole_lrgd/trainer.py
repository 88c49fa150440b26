"""LRGD's trainer: fit prepares demonstrations (no gradient steps); evaluate shows users scored."""
from __future__ import annotations

from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm


class LRGDTrainer(Trainer):
    """A RecBole Trainer for a model with no trainable weights."""

    def _build_optimizer(self, **kwargs):
        return None  # nothing to optimise with gradients

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Choose the demonstrations from training interactions; validation data is never read."""
        self.model.prepare_demonstrations(train_data._dataset)
        if verbose:
            self.logger.info(set_color("demonstrations", "green") + f": mode={self.model.demo_mode} "
                             f"users={self.model.global_demo_users or 'per user'}")
        return None, None

    def evaluate(self, eval_data, load_best_model=False, model_file=None, show_progress=False):
        """RecBole's evaluation, with a progress bar over users while the LLM scores them."""
        if not eval_data:
            return None
        bar = tqdm(total=len(eval_data.uid_list), ncols=100, desc=set_color("LLM scoring", "pink"),
                   unit="user", disable=not show_progress)
        self.model.progress = bar.update
        try:
            return super().evaluate(eval_data, load_best_model=False, show_progress=False)
        finally:
            self.model.progress = None
            bar.close()

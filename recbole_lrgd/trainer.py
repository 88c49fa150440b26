"""LRGD's trainer: fit prepares demonstrations (no gradient steps); evaluate shows users scored."""
from __future__ import annotations

from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_lrgd.evaluator.collector import LRGDCollector


class LRGDTrainer(Trainer):
    """A RecBole Trainer for a model with no trainable weights."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = LRGDCollector(config, model)
        model.track_effect = "effectd" in [m.lower() for m in config["metrics"]]

    def _build_optimizer(self, **kwargs):
        return None  # nothing to optimise with gradients

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Choose the demonstrations from training interactions, then (only when ``valid_users`` is set,
        since LLM scoring is slow) report the validation metrics of that choice."""
        self.model.prepare_demonstrations(train_data._dataset)
        if verbose:
            chosen = {"none": "none (zero-shot)", "nearest": "per user (most item overlap)"}.get(
                self.model.demo_mode, f"global set of users {self.model.global_demo_users}")
            self.logger.info(set_color("demonstrations", "green") + f": {chosen}")
        if not valid_data or self.config["valid_users"] is None:
            return None, None
        self.best_valid_score, self.best_valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
        if verbose:
            self.logger.info(set_color("valid result", "blue") + f": {dict(self.best_valid_result)}")
        return self.best_valid_score, self.best_valid_result

    def evaluate(self, eval_data, load_best_model=False, model_file=None, show_progress=False):
        """RecBole's evaluation, with a progress bar over users while the LLM scores them; logs the score
        cache's hit rate and, in generate mode, adds the parse-failure rates to the result."""
        if not eval_data:
            return None
        bar = tqdm(total=len(eval_data.uid_list), ncols=100, desc=set_color("LLM scoring", "pink"),
                   unit="user", disable=not show_progress)
        self.model.progress = bar.update
        before = self.model.score_counts()
        try:
            result = super().evaluate(eval_data, load_best_model=False, show_progress=False)
        finally:
            self.model.progress = None
            bar.close()
        spent = self.model.score_counts() - before
        if spent.cache_hit_rate is not None:
            self.logger.info(set_color("score cache", "green") + f": {spent.cache_hits} of "
                             f"{spent.cache_hits + spent.cache_misses} scores cached ({spent.cache_hit_rate:.1%} hits)")
        if spent.generated_prompts and result is not None:
            result["generate_parse_failure"] = spent.parse_failure_rate
            result["generate_unparsed"] = spent.unparsed_rate
            self.logger.info(set_color("generate parsing", "green") + f": {spent.parse_failure_rate:.1%} of "
                             f"{spent.generated_prompts} outputs named no candidate, {spent.unparsed_rate:.1%} of "
                             "candidates never named")
        return result

"""LRGD's trainer: fit prepares demonstrations (no gradient steps); evaluate shows users scored."""
from __future__ import annotations

import os
import time
from dataclasses import astuple
from typing import Dict, Set, Tuple

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_lrgd import distributed as dist
from recbole_lrgd.evaluator.collector import LRGDCollector
from recbole_lrgd.llm.scorer import ScoreCounts
from recbole_lrgd.optimizer import DemoOptimizer, OptimizerSettings
from recbole_lrgd.optimizer.state import score_context


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
        if self.model.demo_mode == "lrgd":
            self.optimize_demonstrations(train_data._dataset, saved, show_progress)
        if verbose:
            chosen = {"none": "none (zero-shot)", "nearest": "per user (most item overlap)"}.get(
                self.model.demo_mode, f"global set of users {self.model.global_demo_users}")
            if self.model.library is not None:
                chosen = f"per user, nearest of the library {self.model.library}"
            self.logger.info(set_color("demonstrations", "green") + f": {chosen}")
        if not valid_data or self.config["valid_users"] is None:
            return None, None
        self.best_valid_score, self.best_valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
        if verbose:
            self.logger.info(set_color("valid result", "blue") + f": {dict(self.best_valid_result)}")
        return self.best_valid_score, self.best_valid_result

    def optimize_demonstrations(self, train_dataset, saved: bool = True, show_progress: bool = False) -> dict:
        """LRGD's two-stage demonstration optimization on training users (stage 1 sharded over
        processes). Its state goes to ``demo_state_file``, else beside RecBole's checkpoints when
        ``saved``: a matching state resumes, one from other data warm-starts stage 2. A state matches
        only the same model files, resolved dtype, device type and score keys (``state.score_context``)."""
        config = self.config
        settings = OptimizerSettings.from_config(config)
        optimizer = DemoOptimizer(self.model, settings, context=score_context(config), show_progress=show_progress,
                                  map_fn=dist.map_sharded, is_main=dist.is_main(),
                                  warm_start=config["warm_start"] is not False, round_size=dist.world()[1])
        path = config["demo_state_file"]
        if not path and saved:
            path = os.path.join(config["checkpoint_dir"], f"LRGD-{config['dataset']}-demos-{optimizer.identity[:10]}.json")
        optimizer.state_path = path
        stages = int(config["lrgd_stages"] or 2)
        start = time.time()
        state = optimizer.run(self.model.pool, train_dataset.item_num, stages=stages)
        self.model.set_demonstrations([tuple(s) for s in state["chosen"]], per_user=settings.scope == "per_user")
        self.model.demo_state = state  # the benchmark reports each stage's seconds from it
        final = optimizer.evaluate([tuple(s) for s in state["chosen"]])
        self.logger.info(set_color("demonstration optimizer", "green") + f": stages {stages}, {len(optimizer.probes)} "
                         f"probe users, pool {len(optimizer.candidates)}, objective {final.objective:.4f} "
                         f"(Effect {final.effect:.4f}), {time.time() - start:.1f}s" + (f", state {path}" if path else ""))
        return state

    def evaluate(self, eval_data, load_best_model=False, model_file=None, show_progress=False):
        """RecBole's evaluation, with a progress bar over users while the LLM scores them; logs the score
        cache's hit rate and, in generate mode, adds the parse-failure rates to the result. Under a launcher
        each rank scores its share of the users and all ranks compute the metrics from everyone's scores."""
        if not eval_data:
            return None
        sharded = dist.world()[1] > 1
        mine = self._my_users(eval_data) if sharded else eval_data.uid_list
        bar = tqdm(total=len(mine), ncols=100, desc=set_color("LLM scoring", "pink"),
                   unit="user", disable=not show_progress)
        self.model.progress = bar.update
        before = self.model.score_counts()
        try:
            if sharded:  # each rank scores its shard; RecBole's loop then reads the gathered scores
                table = self._score_sharded(eval_data, mine)
                self.model.predict = lambda interaction: self._lookup(table, interaction)
            result = super().evaluate(eval_data, load_best_model=False, show_progress=False)
        finally:
            self.model.__dict__.pop("predict", None)
            self.model.progress = None
            bar.close()
        spent = self.model.score_counts() - before
        if sharded:
            spent = ScoreCounts(*np.sum([astuple(c) for c in dist.gather_objects(spent)], axis=0).tolist())
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

    # -- sharded evaluation (under accelerate launch / torchrun) ------------------------------------
    def _my_users(self, eval_data) -> Set[int]:
        """This rank's users: ``predict`` scores each loader batch's users in chunks of the scorer's
        ``user_batch_size`` (in order of first appearance), and the chunks are dealt out to the ranks
        whole (strided), so every prompt is batched with the same others as in a single process and
        scores match it to the last bit."""
        step = max(1, int(getattr(self.model.scorer, "user_batch_size", 1) or 1))
        chunks = []
        for batch in eval_data:
            users = list(dict.fromkeys(batch[0][self.model.USER_ID].tolist()))
            chunks += [users[i: i + step] for i in range(0, len(users), step)]
        return {user for chunk in dist.shard(chunks) for user in chunk}

    def _score_sharded(self, eval_data, mine: Set[int]) -> Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """user -> (items, scores, zero-shot scores) of that user's rows, for every user, gathered from all
        ranks; this rank scores only ``mine``, with the model's own ``predict`` on those users' rows."""
        uid_field, iid_field = self.model.USER_ID, self.model.ITEM_ID
        table = {}
        for batch in eval_data:
            interaction = batch[0]
            batch_users = interaction[uid_field].numpy()
            rows = np.flatnonzero(np.isin(batch_users, list(mine)))
            if not len(rows):
                continue
            part = interaction[rows.tolist()]
            scores = self.model.predict(part.to(self.device)).detach().cpu().numpy().astype(np.float64)
            records = self.model.pop_effect_records()  # EffectD's float64 scores, when tracked
            if records:
                scores, zero = np.concatenate([r[0] for r in records]), np.concatenate([r[1] for r in records])
            else:
                zero = np.zeros_like(scores)
            part_users, part_items = batch_users[rows], interaction[iid_field].numpy()[rows]
            for user in dict.fromkeys(part_users.tolist()):
                own = part_users == user
                table[user] = (part_items[own], scores[own], zero[own])
        merged = {}
        for shard_table in dist.gather_objects(table):
            merged.update(shard_table)
        return merged

    def _lookup(self, table, interaction) -> torch.Tensor:
        """``predict`` from the gathered table: the same rows, scores and EffectD records as scoring."""
        users = interaction[self.model.USER_ID].cpu().numpy()
        items = interaction[self.model.ITEM_ID].cpu().numpy()
        scores = np.zeros(len(users), dtype=np.float64)
        zero = np.zeros(len(users), dtype=np.float64)
        for user in dict.fromkeys(users.tolist()):
            rows = np.flatnonzero(users == user)
            known_items, known_scores, known_zero = table[user]
            if not np.array_equal(known_items, items[rows]):
                raise RuntimeError(f"user {user}: the eval loader gave other candidates on its second pass")
            scores[rows], zero[rows] = known_scores, known_zero
        if self.model.track_effect:
            self.model._effect_records.append((scores, zero))
        return torch.from_numpy(scores).float().to(interaction[self.model.ITEM_ID].device)

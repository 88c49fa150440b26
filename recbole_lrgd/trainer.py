"""LRGD's trainer: fit chooses the demonstrations (no gradient steps); evaluate scores users through
``LRGD.score_users`` in RecBole's evaluation loop, sharded over processes under a launcher.

Two evaluation paths: the sampled one (uniN/popN: each user's target and its negatives), and with
``candidate_source`` the full-sort one, where LRGD re-ranks a retriever's top ``rerank_top`` of the whole
catalogue and RecBole's collector ranks every item (``rerank.blend.reranked_row``).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import astuple
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.data.interaction import Interaction
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType, set_color
from tqdm import tqdm

from recbole_lrgd import distributed as dist
from recbole_lrgd.data.chunks import user_chunks
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.evaluator.collector import LRGDCollector
from recbole_lrgd.llm.counts import ScoreCounts
from recbole_lrgd.optimizer.result import FitResult
from recbole_lrgd.optimizer.state import score_context, state_identity
from recbole_lrgd.optimizer.two_stage import DemoOptimizer
from recbole_lrgd.settings import OptimizerSettings
from recbole_lrgd.rerank.blend import misses_need_no_llm, reranked_row, top_candidates
from recbole_lrgd.rerank.fuse import Fusion, choose_weight, user_blocks
from recbole_lrgd.rerank.retriever import Retriever

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset

    from recbole_lrgd.model.lrgd import LRGD


def eval_user_count(eval_data: AbstractDataLoader) -> int:
    """Users an eval loader evaluates: RecBole's ``uid_list``, which a sequential model's full-sort loader
    lacks (it has one row per test interaction)."""
    uids = getattr(eval_data, "uid_list", None)
    if uids is None:
        uids = eval_data._dataset.inter_feat[eval_data._dataset.uid_field].unique()
    return len(uids)


def idle_ranks(batch_users: int, chunk_users: int, world_size: int) -> int:
    """Ranks left without a chunk of a full evaluation batch: chunks are dealt out whole within a batch (exact
    sharding), so a batch of fewer than ``world_size`` chunks leaves the other ranks waiting on it."""
    return max(0, world_size - math.ceil(batch_users / chunk_users))


def idle_ranks_warning(user_rows: np.ndarray, step: int, chunk_users: int, world_size: int) -> Optional[str]:
    """What to say when an evaluation's batches leave ranks idle (None when they do not). ``user_rows``: each
    evaluated user's rows (its targets, each with its negatives); ``step``: the users RecBole packs into a batch at
    most. What helps: a batch holding ``world_size`` chunks, where the users make that many, else smaller chunks."""
    users = len(user_rows)
    batch_users = min(step, users)
    idle = idle_ranks(batch_users, chunk_users, world_size)
    if not idle:
        return None
    said = (f"each evaluation batch holds {batch_users} users, scored in chunks of {chunk_users}: {idle} of "
            f"{world_size} ranks wait on every batch; ")
    if idle_ranks(users, chunk_users, world_size):
        chunks = math.ceil(users / chunk_users)
        return said + (f"the {users} users make only {chunks} chunk{'s' * (chunks > 1)}: a smaller user_batch_size "
                       "or fewer processes keeps every rank busy")
    enough = int(np.sort(user_rows)[::-1][:world_size * chunk_users].sum())  # RecBole packs the largest first
    return said + f"eval_batch_size={enough} gives every rank a chunk (the scores stay exact)"


class LRGDTrainer(Trainer):
    """A RecBole Trainer for a model with no trainable weights."""

    def __init__(self, config: Config, model: LRGD, retriever: Optional[Retriever] = None,
                 fusion: Optional[Fusion] = None):
        """``retriever`` (``candidate_source``): full-sort loaders re-rank its top ``rerank_top``. ``fusion``
        (``prior_model``): sampled candidates' scores are fused with the prior's; ``fit`` picks an ``auto`` weight."""
        super().__init__(config, model)
        self.eval_collector = LRGDCollector(config)
        self.retriever, self.fusion = retriever, fusion
        # the last full-sort evaluation's share of users whose held-out item was among their top-N candidates
        self.target_in_top_n: Optional[float] = None

    def _build_optimizer(self, **kwargs):
        return None  # nothing to optimise with gradients

    def fit(self, train_data: AbstractDataLoader, valid_data: Optional[AbstractDataLoader] = None, verbose: bool = True,
            saved: bool = True, show_progress: bool = False, callback_fn: Optional[Callable] = None
            ) -> Tuple[Optional[float], Optional[Dict[str, float]]]:
        """Choose the demonstrations from training interactions (``demo_mode: lrgd``: the optimizer; the other modes'
        are fixed with the model), then (only when ``valid_users`` is set,
        since LLM scoring is slow) report the validation metrics of that choice. As RecBole's ``fit``, hands the
        training data to the collector (ItemCoverage, AveragePopularity... read it)."""
        self.eval_collector.data_collect(train_data)
        if self.model.demo_mode == "lrgd":
            self.optimize_demonstrations(train_data._dataset, saved, show_progress)
        if verbose:
            self.logger.info(set_color("demonstrations", "green") + f": {self.model.choice}")
        if self.fusion is not None and self.fusion.weight == "auto":
            self.fusion = self.fusion.with_weight(self._choose_prior_weight(valid_data, show_progress))
        if not valid_data or self.config["valid_users"] is None:
            return None, None
        self.best_valid_score, self.best_valid_result = self._valid_epoch(valid_data, show_progress=show_progress)
        if verbose:
            self.logger.info(set_color("valid result", "blue") + f": {dict(self.best_valid_result)}")
        return self.best_valid_score, self.best_valid_result

    def _choose_prior_weight(self, valid_data, show_progress: bool = False) -> float:
        """``prior_weight: auto``: the weight of ``fuse.WEIGHT_GRID`` with the best NDCG@10 on the validation users."""
        blocks = []
        bar = tqdm(total=eval_user_count(valid_data), ncols=100, desc=set_color("LLM scoring (prior weight)", "pink"),
                   unit="user", disable=not show_progress)
        with bar:
            for interaction, *_ in valid_data:
                llm, _ = self._score_batch(interaction, False, bar.update)
                blocks += user_blocks(interaction[self.model.USER_ID].cpu().numpy(), llm,
                                      self.fusion.prior_scores(interaction),
                                      interaction[self.config["LABEL_FIELD"]].cpu().numpy())
        weight, means = choose_weight(blocks)
        self.logger.info(set_color("prior weight", "green") + f": auto chose {weight:g} by NDCG@10 on {len(blocks)} "
                         "validation users (" + ", ".join(f"{w:g}: {m:.4f}" for w, m in means.items()) + ")")
        return weight

    def optimize_demonstrations(self, train_dataset: Dataset, saved: bool = True, show_progress: bool = False
                                ) -> FitResult:
        """LRGD's two-stage demonstration optimization on training users (stage 1 sharded over
        processes). Its state goes to ``demo_state_file``, else beside RecBole's checkpoints when
        ``saved``: a matching state resumes, one from other data warm-starts stage 2. A state matches
        only the same model files, resolved dtype, device type and score keys (``state.score_context``)."""
        config = self.config
        settings = OptimizerSettings.from_config(config)
        context = score_context(config)
        path = settings.state_file
        if not path and saved:
            identity = state_identity(settings.identity(), context)
            path = os.path.join(config["checkpoint_dir"], f"LRGD-{config['dataset']}-demos-{identity[:10]}.json")
        optimizer = DemoOptimizer(self.model.ranker, settings, train_dataset.item_num, state_path=path, context=context,
                                  show_progress=show_progress, map_fn=dist.map_sharded, is_main=dist.is_main(),
                                  round_size=dist.world()[1])
        stages = settings.stages
        start = time.time()
        state = optimizer.run(stages)
        final = optimizer.evaluate(state.chosen)
        fit = FitResult(tuple(state.chosen), settings.scope == "per_user", final.objective, final.effect,
                        {k: state.seconds[k] for k in ("stage1", "stage2")[:stages] if k in state.seconds}, path)
        self.model.use_demonstrations(fit.choice, fit)
        self.logger.info(set_color("demonstration optimizer", "green") + f": stages {stages}, {len(optimizer.probes)} "
                         f"probe users, pool {len(optimizer.pool_users)}, objective {final.objective:.4f} "
                         f"(Effect {final.effect:.4f}), {time.time() - start:.1f}s"
                         + (f", state {path}" if path else ""))
        return fit

    @torch.no_grad()
    def evaluate(self, eval_data: Optional[AbstractDataLoader], load_best_model: bool = False,
                 model_file: Optional[str] = None, show_progress: bool = False) -> Optional[Dict[str, float]]:
        """RecBole's evaluation loop (``Trainer.evaluate``) over ``LRGD.score_users``, with a progress bar
        over users while the LLM scores them; hands the zero-shot scores EffectD needs to the collector,
        logs the score cache's hit rate and, in generate mode, adds the parse-failure rates to the result.
        Under a launcher each rank scores its share of each batch's user chunks and every rank collects
        everyone's scores, so all compute the metrics of a single process. LRGD has no weights to load.
        A full-sort loader (``candidate_source``) goes through ``_collect_reranked`` instead."""
        if not eval_data:
            return None
        full_sort = isinstance(eval_data, FullSortEvalDataLoader)
        if full_sort and self.retriever is None:
            raise LRGDError("LRGD ranks a full-sort loader only by re-ranking a retriever: set candidate_source")
        self.model.eval()
        self.tot_item_num = eval_data._dataset.item_num
        if not full_sort:
            self._warn_of_idle_ranks(eval_data)
        bar = tqdm(total=eval_user_count(eval_data), ncols=100, desc=set_color("LLM scoring", "pink"),
                   unit="user", disable=not show_progress)
        before = self.model.score_counts()
        offered: List[bool] = []  # full sort: per user, whether the target is among the candidates
        try:
            for batch in eval_data:
                if full_sort:
                    offered += self._collect_reranked(batch, bar.update)
                    continue
                interaction, row_idx, positive_u, positive_i = batch
                llm, zero_shot = self._score_batch(interaction, self.eval_collector.needs_zero_shot, bar.update)
                scores = llm if self.fusion is None else self.fusion.fuse(
                    interaction[self.model.USER_ID].cpu().numpy(), llm, self.fusion.prior_scores(interaction))
                scores_tensor = torch.from_numpy(scores).float().to(self.device)
                if self.config["eval_type"] == EvaluatorType.RANKING:  # as Trainer._neg_sample_batch_eval
                    matrix = torch.full((positive_u[-1] + 1, self.tot_item_num), -np.inf, device=self.device)
                    matrix[row_idx, interaction[self.config["ITEM_ID_FIELD"]]] = scores_tensor
                    scores_tensor = matrix
                self.eval_collector.eval_batch_collect(scores_tensor, interaction, positive_u, positive_i,
                                                       effect_scores=None if zero_shot is None else (llm, zero_shot))
        finally:
            bar.close()
        if full_sort:
            self.target_in_top_n = float(np.mean(offered)) if offered else None
        self.eval_collector.model_collect(self.model)
        result = self.evaluator.evaluate(self.eval_collector.get_data_struct())
        self.wandblogger.log_eval_metrics(result, head="eval")
        self._log_score_counts(self.model.score_counts() - before, result)
        return result

    def _warn_of_idle_ranks(self, eval_data) -> None:
        """Under a launcher, warn (on rank 0) when an evaluation batch holds too few users to give every rank
        a chunk, and say which ``eval_batch_size`` would."""
        world_size = dist.world()[1]
        if world_size == 1 or not dist.is_main() or not hasattr(eval_data, "uid2items_num"):  # sampled loaders
            return
        user_rows = eval_data.uid2items_num[np.asarray(eval_data.uid_list)] * eval_data.times
        warning = idle_ranks_warning(user_rows, eval_data.step, self.model.chunk_users, world_size)
        if warning:
            self.logger.warning(warning)

    def _collect_reranked(self, batch, progress: Callable[[int], None]) -> List[bool]:
        """One full-sort batch (one row per user, its held-out item in ``positive_i``) to the collector: the
        retriever's scores over the catalogue, the LLM's scores of each user's top ``rerank_top`` (through
        ``_score_batch``: the sampled path's chunks, prompts and sharding), and their ``reranked_row``s. At
        ``rerank_blend`` 1 the order is the retriever's whatever the LLM says, so the LLM is not asked. Nor is it
        asked about a user whose held-out item is not among its candidates, where the metrics cannot tell
        (``misses_need_no_llm``), unless ``rerank_score_all``: that user's candidates keep the retriever's order.

        Returns, per user, whether the held-out item is among the candidates. Every rank ranks every user's
        catalogue (only the LLM's scoring is sharded), so under a launcher each rank has all users' answers."""
        interaction, _, positive_u, positive_i = batch
        users, targets = interaction[self.model.USER_ID].cpu().numpy(), positive_i.cpu().numpy()
        retrieved = self.retriever.scores(users, targets)
        candidates = top_candidates(retrieved, self.config["rerank_top"])
        blend = self.config["rerank_blend"]
        offered = [bool((c == t).any()) for c, t in zip(candidates, targets)]
        score_all = self.config["rerank_score_all"] or not misses_need_no_llm(
            self.config["metrics"], self.config["topk"], self.config["rerank_top"])
        asked = [k for k in range(len(users)) if blend < 1 and (offered[k] or score_all)]
        per_user = [np.zeros(len(c)) for c in candidates]
        progress(len(users) - len(asked))
        if asked:
            counts = [len(candidates[k]) for k in asked]
            rows = interaction[torch.from_numpy(np.repeat(np.array(asked), counts))]  # a row per candidate
            items = torch.from_numpy(np.concatenate([candidates[k] for k in asked]).astype(np.int64))
            rows.update(Interaction({self.model.ITEM_ID: items}))
            llm, _ = self._score_batch(rows, False, progress)
            for k, scores in zip(asked, np.split(llm, np.cumsum(counts)[:-1])):
                per_user[k] = scores
        weights = np.ones(len(users))  # not asked: the retriever's order
        weights[asked] = blend
        matrix = torch.stack([reranked_row(retrieved[k], candidates[k], per_user[k], float(weights[k]))
                              for k in range(len(users))])
        self.eval_collector.eval_batch_collect(matrix.to(self.device), interaction, positive_u, positive_i)
        return offered

    def _score_batch(self, interaction, zero_shot: bool, progress: Callable[[int], None]
                     ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``LRGD.score_users`` of a batch's rows, a ``user_chunks`` chunk at a time: under a launcher the
        chunks are dealt out whole to the ranks (``map_sharded``), so every prompt is batched with the same
        others as in a single process and the gathered scores equal its scores to the last bit."""
        users = interaction[self.model.USER_ID].cpu().numpy()
        chunks = [(len(chunk), np.concatenate([rows for _, rows in chunk]))
                  for chunk in user_chunks(users, self.model.chunk_users)]

        def score_chunk(chunk: Tuple[int, np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
            n_users, rows = chunk
            got = self.model.score_users(interaction[rows].to(self.device), zero_shot)
            progress(n_users)
            return got

        parts = dist.map_sharded(score_chunk, chunks)
        progress(sum(n for n, _ in chunks) - sum(n for n, _ in dist.shard(chunks)))  # the other ranks' users
        scores = np.zeros(len(users), dtype=np.float64)
        without = np.zeros(len(users), dtype=np.float64) if zero_shot else None
        for (_, rows), (chunk_scores, chunk_without) in zip(chunks, parts):
            scores[rows] = chunk_scores
            if zero_shot:
                without[rows] = chunk_without
        return scores, without

    def _log_score_counts(self, spent: ScoreCounts, result) -> None:
        """The score cache's hit rate, and generate mode's parse failures (also added to ``result``), summed
        over the ranks."""
        if dist.world()[1] > 1:
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

"""LRGD as a RecBole sequential model: a thin adapter over ``ICLRanker``; no trainable weights.

RecBole's evaluation rows go to the ranker a ``user_chunks`` chunk at a time. The ranker is built whole from the
config and the training data (its pool); the demonstrations each user sees are ``self.choice``, fixed here for
``demo_mode`` none, random and nearest, and for ``lrgd`` by ``LRGDTrainer.fit`` (the optimizer's result, through
``use_demonstrations``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from logging import getLogger
from typing import TYPE_CHECKING, Any, Callable, Dict, NoReturn, Optional, Sequence, Tuple

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_lrgd.console import FILE_ONLY
from recbole_lrgd.data.candidates import FixedCandidateEvalDataLoader
from recbole_lrgd.data.chunks import user_chunks
from recbole_lrgd.data.demonstrations import DemoChoice, DemonstrationPool, training_sequences
from recbole_lrgd.data.titles import item_titles
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.batching import AUTO
from recbole_lrgd.llm.loader import llm_device, load_config_llm, load_config_tokenizer
from recbole_lrgd.llm.model_identity import model_identity
from recbole_lrgd.llm.score_cache import ScoreCache
from recbole_lrgd.llm.modes import make_scorer
from recbole_lrgd.llm.counts import ScoreCounts
from recbole_lrgd.llm.scorer import Scorer
from recbole_lrgd.model.ranker import ICLRanker
from recbole_lrgd.optimizer.result import FitResult
from recbole_lrgd.settings import DEMO_MODES, DemoSettings, PromptSettings, ScorerSettings

if TYPE_CHECKING:
    from recbole.config import Config
    from recbole.data.dataloader import AbstractDataLoader
    from recbole.data.dataset import Dataset
    from recbole.data.interaction import Interaction


def config_scorer(config: Config) -> Scorer:
    """The scorer of a config's ``ScorerSettings`` over its LLM."""
    model, tokenizer = load_config_llm(config)
    s = ScorerSettings.from_config(config)
    cache, model_id = None, ""
    if s.score_cache:
        cache = ScoreCache.in_dir(s.score_cache_dir)
        model_id = model_identity(config["llm_path"], config["llm_dtype"], llm_device(config))
    scorer = make_scorer(model, tokenizer, s, cache, model_id)
    # what auto chose is news on the console; a fixed size is in the config already
    getLogger().info(f"scoring batches: {scorer.batching}", extra=None if s.user_batch_size == AUTO else FILE_ONLY)
    return scorer


def config_ranker(config: Config, titles: Sequence[str], scorer: Any, pool: Optional[DemonstrationPool] = None
                  ) -> ICLRanker:
    """The ranker of a config's prompt and demonstration settings over ``titles`` and ``pool``, scoring with
    ``scorer`` (a ``Scorer``, or for prompts alone anything with a scorer's ``tokenizer`` and ``mode``)."""
    return ICLRanker(titles, scorer, PromptSettings.from_config(config), DemoSettings.from_config(config), pool)


@dataclass(frozen=True)
class _PromptsOnly:
    """What the ranker's prompts read of a scorer: its tokenizer and mode, no model."""

    tokenizer: Any
    mode: str


def check_prompt_budget(config: Config, eval_data: AbstractDataLoader) -> None:
    """Every evaluated user's shortest prompt (no demonstrations, one history item, its candidates) fits
    ``max_prompt_tokens``, checked with the tokenizer alone before the model loads: ``build_prompt``'s
    ``LRGDError`` otherwise. Candidates known only when evaluating (a retriever's top-N) are checked then."""
    if not config["max_prompt_tokens"] or not isinstance(eval_data, FixedCandidateEvalDataLoader):
        return
    dataset = eval_data._dataset
    tokenizer = load_config_tokenizer(config)
    titles = item_titles(dataset, config["title_field"], tokenizer, config["max_title_tokens"])
    ranker = config_ranker(config, titles, _PromptsOnly(tokenizer, config["scorer_mode"]))
    feat = dataset.inter_feat
    seqs = feat[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]].numpy()
    lens = feat[config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    first_row: Dict[int, int] = {}
    for row, user in enumerate(feat[dataset.uid_field].tolist()):
        first_row.setdefault(user, row)
    for user, candidates in eval_data.candidate_sets().items():
        row = first_row[user]
        ranker.prompt(user, seqs[row, : lens[row]], candidates, [])


class LRGD(SequentialRecommender):
    """In-context-learning recommender: ranks each user's candidates with a causal LM."""

    input_type = InputType.POINTWISE

    def __init__(self, config: Config, dataset: Dataset):
        """``dataset``: the training data (RecBole hands a model its train loader's dataset), whose users'
        sequences make the demonstration pool."""
        super().__init__(config, dataset)
        self.config = config
        self.demo_mode = DemoSettings.from_config(config).mode
        if self.demo_mode not in DEMO_MODES:
            raise LRGDError(f"demo_mode {self.demo_mode!r}: use one of {', '.join(DEMO_MODES)}")
        tokenizer = load_config_llm(config)[1]
        self.titles = item_titles(dataset, config["title_field"], tokenizer, config["max_title_tokens"])
        pool = DemonstrationPool(training_sequences(dataset), dataset.item_num, config["max_his_len"])
        self.ranker = config_ranker(config, self.titles, config_scorer(config), pool)
        # lrgd's choice is the optimizer's, set by fit
        self.choice: Optional[DemoChoice] = None if self.demo_mode == "lrgd" else DemoChoice.for_mode(
            self.demo_mode, pool, self.ranker.demos.num_demos, self.ranker.demos.seed)
        self.fit_result: Optional[FitResult] = None  # lrgd: the optimizer's chosen set and stage seconds

    def score_counts(self) -> ScoreCounts:
        """A snapshot of the scorer's counts (cache hits, generate-mode parse failures); zeros when a
        stand-in scorer keeps none."""
        return copy.copy(getattr(self.ranker.scorer, "counts", None) or ScoreCounts())

    # -- demonstrations --------------------------------------------------------------------------
    def use_demonstrations(self, choice: DemoChoice, fit: Optional[FitResult] = None) -> None:
        """Show ``choice``'s demonstrations from now on (the optimizer's, with its ``fit``: what ``run`` reports)."""
        self.choice, self.fit_result = choice, fit

    @property
    def chunk_users(self) -> int:
        """Users scored in one call of the scorer (``llm/batching.py``): callers chunk users by it."""
        return self.ranker.scorer.chunk_users

    @property
    def global_demo_users(self) -> list:
        """The users of the global demonstration set ([] when users get their own)."""
        return [] if self.choice is None or self.choice.per_user else self.choice.users

    # -- scores ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score_users(self, interaction: Interaction, zero_shot: bool = False,
                    progress: Optional[Callable[[int], None]] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Float64 scores of RecBole's uniN/popN rows, or of each user's rows of a retriever's top-N (full
        ranking: ``LRGDTrainer._collect_reranked``), grouped by user (the label is never read) and, with
        ``zero_shot``, the same rows without demonstrations (for EffectD; else None). Users are scored a
        ``user_chunks`` chunk of ``chunk_users`` at a time; ``progress(n)`` follows each chunk of n users."""
        if self.choice is None:
            raise LRGDError("LRGD has no demonstrations yet: run trainer.fit(train_data) before evaluating")
        users = interaction[self.USER_ID].cpu().numpy()
        items = interaction[self.ITEM_ID].cpu().numpy()
        seqs = interaction[self.ITEM_SEQ].cpu().numpy()
        lens = interaction[self.ITEM_SEQ_LEN].cpu().numpy()
        scores = np.zeros(len(users), dtype=np.float64)
        without = np.zeros(len(users), dtype=np.float64) if zero_shot else None
        policy = self.ranker.policy(self.choice)
        for chunk in user_chunks(users, self.chunk_users):
            got, got_without = self.ranker.score_users(
                [(user, seqs[rows[0], : lens[rows[0]]], items[rows]) for user, rows in chunk], policy, zero_shot)
            for k, (_, rows) in enumerate(chunk):
                scores[rows] = got[k]
                if zero_shot:
                    without[rows] = got_without[k]
            if progress is not None:
                progress(len(chunk))
        return scores, without

    def predict(self, interaction: Interaction) -> torch.Tensor:
        """RecBole's ``predict``: the rows' scores (``score_users``) as a float tensor."""
        return torch.from_numpy(self.score_users(interaction)[0]).float().to(interaction[self.ITEM_ID].device)

    def calculate_loss(self, interaction: Interaction) -> NoReturn:
        raise LRGDError("LRGD has no trainable weights: use LRGDTrainer, whose fit prepares demonstrations")

    def full_sort_predict(self, interaction: Interaction) -> NoReturn:
        raise LRGDError("LRGD ranks sampled candidates (eval_args mode uni19 or pop19), or in mode full a retriever's "
                        "top-N through LRGDTrainer.evaluate (candidate_source); it has no full_sort_predict")

"""LRGD as a RecBole sequential model: a thin adapter over ``ICLRanker``; no trainable weights.

RecBole's evaluation rows go to the ranker a ``user_chunks`` chunk at a time; the demonstrations each
user sees are ``self.choice``, fixed by ``LRGDTrainer.fit`` (``prepare_demonstrations``, and for
``demo_mode: lrgd`` the optimizer's result through ``use_demonstrations``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_lrgd.data.candidates import FixedCandidateEvalDataLoader
from recbole_lrgd.data.chunks import user_chunks
from recbole_lrgd.data.demonstrations import DemoChoice, DemonstrationPool, training_sequences
from recbole_lrgd.data.titles import item_titles
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.loader import llm_device, load_config_llm, load_config_tokenizer
from recbole_lrgd.llm.prompt import DEFAULT_INSTRUCTION
from recbole_lrgd.llm.score_cache import ScoreCache, model_identity
from recbole_lrgd.llm.modes import make_scorer
from recbole_lrgd.llm.scorer import Scorer, ScoreCounts
from recbole_lrgd.model.ranker import ICLRanker

DEMO_MODES = ("none", "random", "nearest", "lrgd")  # lrgd: chosen by the two-stage optimizer in fit


def config_scorer(config) -> Scorer:
    """The scorer of a config's ``scorer_mode``, every setting read from the config."""
    model, tokenizer = load_config_llm(config)
    cache, model_id = None, ""
    if config["score_cache"]:
        cache = ScoreCache.in_dir(config["score_cache_dir"])
        model_id = model_identity(config["llm_path"], config["llm_dtype"], llm_device(config))
    return make_scorer(model, tokenizer, mode=config["scorer_mode"],
                       candidate_batch_size=config["candidate_batch_size"], user_batch_size=config["user_batch_size"],
                       score_cache=cache, model_id=model_id, max_new_tokens=config["max_new_tokens"],
                       match_threshold=config["title_match_threshold"], title_score=config["title_score"],
                       title_score_tokens=config["title_score_tokens"])


def config_ranker(config, titles: Sequence[str], scorer: Any) -> ICLRanker:
    """The ranker of a config's prompt settings over ``titles``, scoring with ``scorer`` (a ``Scorer``, or for
    prompts alone anything with a scorer's ``tokenizer`` and ``mode``)."""
    listed = config["list_candidates"]
    return ICLRanker(
        titles, scorer, num_demos=config["num_demos"], max_his_len=config["max_his_len"],
        max_prompt_tokens=config["max_prompt_tokens"], instruction=config["prompt_instruction"] or DEFAULT_INSTRUCTION,
        list_candidates=None if listed in (None, "auto") else bool(listed), seed=config["seed"],
        demo_format=config["demo_format"], demo_negatives=config["demo_negatives"])


@dataclass(frozen=True)
class _PromptsOnly:
    """What the ranker's prompts read of a scorer: its tokenizer and mode, no model."""

    tokenizer: Any
    mode: str


def check_prompt_budget(config, eval_data) -> None:
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

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.demo_mode = config["demo_mode"] or "none"
        if self.demo_mode not in DEMO_MODES:
            raise LRGDError(f"demo_mode {self.demo_mode!r}: use one of {', '.join(DEMO_MODES)}")
        tokenizer = load_config_llm(config)[1]
        self.titles = item_titles(dataset, config["title_field"], tokenizer, config["max_title_tokens"])
        self.ranker = config_ranker(config, self.titles, config_scorer(config))
        self.choice: Optional[DemoChoice] = DemoChoice() if self.demo_mode == "none" else None  # set by fit
        self.demo_state: Optional[dict] = None  # lrgd: the optimizer's state (sets, objectives, seconds)

    def score_counts(self) -> ScoreCounts:
        """A snapshot of the scorer's counts (cache hits, generate-mode parse failures); zeros when a
        stand-in scorer keeps none."""
        return copy.copy(getattr(self.ranker.scorer, "counts", None) or ScoreCounts())

    # -- demonstrations --------------------------------------------------------------------------
    def prepare_demonstrations(self, train_dataset) -> None:
        """Build the pool from training interactions and fix the choice of ``demo_mode`` (lrgd's comes from
        the optimizer, through ``use_demonstrations``)."""
        self.ranker.pool = DemonstrationPool(training_sequences(train_dataset), train_dataset.item_num,
                                             self.ranker.max_his_len)
        if self.demo_mode != "lrgd":
            self.choice = DemoChoice.for_mode(self.demo_mode, self.ranker.pool, self.ranker.num_demos, self.ranker.seed)

    def use_demonstrations(self, choice: DemoChoice, optimizer_state: Optional[dict] = None) -> None:
        """Install a choice (the optimizer's, with its state, which the benchmark reports stage times from)."""
        self.choice, self.demo_state = choice, optimizer_state

    @property
    def global_demo_users(self) -> list:
        """The users of the global demonstration set ([] when users get their own)."""
        return [] if self.choice is None or self.choice.per_user else self.choice.users

    # -- scores ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score_users(self, interaction, zero_shot: bool = False, progress: Optional[Callable[[int], None]] = None
                    ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Float64 scores of RecBole's uniN/popN rows, or of each user's rows of a retriever's top-N (full
        ranking: ``LRGDTrainer._collect_reranked``), grouped by user (the label is never read) and, with
        ``zero_shot``, the same rows without demonstrations (for EffectD; else None). Users are scored a
        ``user_chunks`` chunk of ``user_batch_size`` at a time; ``progress(n)`` follows each chunk of n users."""
        if self.choice is None:
            raise LRGDError("LRGD has no demonstrations yet: run trainer.fit(train_data) before evaluating")
        users = interaction[self.USER_ID].cpu().numpy()
        items = interaction[self.ITEM_ID].cpu().numpy()
        seqs = interaction[self.ITEM_SEQ].cpu().numpy()
        lens = interaction[self.ITEM_SEQ_LEN].cpu().numpy()
        scores = np.zeros(len(users), dtype=np.float64)
        without = np.zeros(len(users), dtype=np.float64) if zero_shot else None
        for chunk in user_chunks(users, self.ranker.scorer.user_batch_size):
            got, got_without = self.ranker.score_users(
                [(user, seqs[rows[0], : lens[rows[0]]], items[rows]) for user, rows in chunk], self.choice, zero_shot)
            for k, (_, rows) in enumerate(chunk):
                scores[rows] = got[k]
                if zero_shot:
                    without[rows] = got_without[k]
            if progress is not None:
                progress(len(chunk))
        return scores, without

    def predict(self, interaction) -> torch.Tensor:
        """RecBole's ``predict``: the rows' scores (``score_users``) as a float tensor."""
        return torch.from_numpy(self.score_users(interaction)[0]).float().to(interaction[self.ITEM_ID].device)

    def calculate_loss(self, interaction):
        raise LRGDError("LRGD has no trainable weights: use LRGDTrainer, whose fit prepares demonstrations")

    def full_sort_predict(self, interaction):
        raise LRGDError("LRGD ranks sampled candidates (eval_args mode uni19 or pop19), or in mode full a retriever's "
                        "top-N through LRGDTrainer.evaluate (candidate_source); it has no full_sort_predict")

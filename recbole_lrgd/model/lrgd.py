"""LRGD as a RecBole sequential model: ``predict`` = prompt + LLM score; no trainable weights."""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_lrgd.data.demonstrations import DemonstrationPool, training_sequences
from recbole_lrgd.data.titles import item_titles
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.generate import FUZZY_THRESHOLD
from recbole_lrgd.llm.loader import load_llm
from recbole_lrgd.llm.prompt import (DEFAULT_INSTRUCTION, Demonstration, Prompt, build_prompt,
                                     render_demonstration)
from recbole_lrgd.llm.score_cache import ScoreCache, model_identity
from recbole_lrgd.llm.scorer import DEFAULT_MAX_NEW_TOKENS, LLMScorer, ScoreCounts

DEMO_MODES = ("none", "random", "nearest", "lrgd")  # lrgd: chosen by the two-stage optimizer in fit


def llm_device(config) -> str:
    """The LLM's device: ``llm_device``, else RecBole's (use_gpu / gpu_id)."""
    return str(config["llm_device"] or config["device"])


def load_config_llm(config):
    """``(model, tokenizer)`` for a config; loaded once per process (so a pre-flight load is free later)."""
    return load_llm(config["llm_path"], device=llm_device(config), dtype=config["llm_dtype"],
                    device_map=config["llm_device_map"])


class LRGD(SequentialRecommender):
    """In-context-learning recommender: ranks each user's candidates with a causal LM."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.titles = item_titles(dataset, config["title_field"])
        self.demo_mode = config["demo_mode"] or "none"
        if self.demo_mode not in DEMO_MODES:
            raise LRGDError(f"demo_mode {self.demo_mode!r}: use one of {', '.join(DEMO_MODES)}")
        self.num_demos = int(config["num_demos"] or 0)
        self.max_his_len = int(config["max_his_len"])
        self.max_prompt_tokens = config["max_prompt_tokens"]
        self.instruction = config["prompt_instruction"] or DEFAULT_INSTRUCTION
        listed = config["list_candidates"]
        self.list_candidates = None if listed in (None, "auto") else bool(listed)
        self.seed = int(config["seed"])
        self.pool: Optional[DemonstrationPool] = None
        self.global_demo_users: List[int] = []
        self.demo_cuts: Dict[int, int] = {}  # pool user -> oldest shown history items cut (set by the optimizer)
        self.library: Optional[List[int]] = None  # lrgd per_user scope: users retrieve their nearest from these
        self.demo_state: Optional[dict] = None  # lrgd: the optimizer's state after fit (sets, objectives, seconds)
        self.progress: Optional[Callable[[int], None]] = None  # called with the number of users scored
        self.track_effect = False  # also score the zero-shot prompt, for EffectD
        self._effect_records: List[tuple] = []
        self._scorer: Optional[LLMScorer] = None

    # -- the LLM ---------------------------------------------------------------------------------
    @property
    def scorer(self) -> LLMScorer:
        if self._scorer is None:
            device = llm_device(self.config)
            model, tokenizer = load_config_llm(self.config)
            cache, model_id = None, ""
            if self.config["score_cache"] is not False:  # on unless set to False
                cache = ScoreCache.in_dir(self.config["score_cache_dir"])
                model_id = model_identity(self.config["llm_path"], self.config["llm_dtype"], device)
            threshold = self.config["title_match_threshold"]
            self._scorer = LLMScorer(
                model, tokenizer, self.config["scorer_mode"], self.config["candidate_batch_size"],
                score_cache=cache, model_id=model_id,
                max_new_tokens=self.config["max_new_tokens"] or DEFAULT_MAX_NEW_TOKENS,
                match_threshold=FUZZY_THRESHOLD if threshold is None else threshold,
                user_batch_size=self.config["user_batch_size"] or 8)
        return self._scorer

    def score_counts(self) -> ScoreCounts:
        """A snapshot of the scorer's counts (cache hits, generate-mode parse failures); zeros before
        the scorer exists or when a stand-in scorer keeps none."""
        return copy.copy(getattr(self._scorer, "counts", None) or ScoreCounts())

    # -- demonstrations --------------------------------------------------------------------------
    def prepare_demonstrations(self, train_dataset) -> None:
        """Build the pool from training interactions and fix the global set where the mode has one."""
        self.pool = DemonstrationPool(training_sequences(train_dataset), train_dataset.item_num)
        if self.demo_mode == "random":
            self.global_demo_users = self.pool.random_users(self.num_demos, self.seed)

    def set_demonstrations(self, specs: Sequence[Tuple[int, int]], per_user: bool = False) -> None:
        """Install the optimizer's choice: ``(user, cut)`` pairs, a global set or a per-user library."""
        self.demo_cuts = {int(u): int(c) for u, c in specs}
        users = [int(u) for u, _ in specs]
        self.global_demo_users, self.library = ([], users) if per_user else (users, None)

    def demo_users_for(self, user: int, history: np.ndarray) -> List[int]:
        if self.demo_mode == "none" or self.num_demos == 0:
            return []
        if self.pool is None:
            raise LRGDError("LRGD has no demonstration pool: run trainer.fit(train_data) before evaluating")
        if self.demo_mode == "nearest" or self.library is not None:
            return self.pool.nearest_users(history, self.num_demos, exclude=user, among=self.library)
        return self.global_demo_users

    def demonstration_items(self, user: int) -> Tuple[np.ndarray, int]:
        """(history, target) item ids of a pool user's demonstration, with the optimizer's cut."""
        return self.pool.demonstration(user, self.max_his_len, self.demo_cuts.get(int(user), 0))

    def demonstrations(self, demo_users: List[int]) -> List[Demonstration]:
        return [self.as_demonstration(*self.demonstration_items(v)) for v in demo_users]

    def as_demonstration(self, history: Sequence[int], target: int) -> Demonstration:
        return Demonstration(tuple(self.titles[i] for i in history), self.titles[target])

    def demonstration_tokens(self, history: Sequence[int], target: int) -> int:
        """Tokens one demonstration adds to a prompt (the optimizer's token budget)."""
        text = "\n".join(render_demonstration(1, self.as_demonstration(history, target)))
        return len(self.scorer.tokenizer(text, add_special_tokens=False).input_ids)

    # -- prompts and scores ----------------------------------------------------------------------
    def user_prompt(self, user: int, history: np.ndarray, candidates: np.ndarray,
                    demo_users: Optional[List[int]] = None) -> Prompt:
        """The prompt for one user and candidate list; shuffling is seeded by (seed, user)."""
        if len(history) == 0:
            raise LRGDError(f"user {user} has an empty history: filter users with user_inter_num_interval")
        if demo_users is None:
            demo_users = self.demo_users_for(user, history)
        return self.prompt_with(user, history, candidates, self.demonstrations(demo_users))

    def prompt_with(self, user: int, history: np.ndarray, candidates: np.ndarray,
                    demos: Sequence) -> Prompt:
        """The prompt for given demonstrations (``Demonstration``s or ``(history ids, target id)``)."""
        demos = [d if isinstance(d, Demonstration) else self.as_demonstration(*d) for d in demos]
        return build_prompt(
            self.scorer.tokenizer, demos,
            [self.titles[i] for i in history[-self.max_his_len:]], [self.titles[i] for i in candidates],
            seed=(self.seed, int(user)), mode=self.scorer.mode, max_tokens=self.max_prompt_tokens,
            instruction=self.instruction, list_candidates=self.list_candidates)

    def score_prompts(self, prompts: Sequence[Prompt]) -> List[np.ndarray]:
        """Scores of many prompts (caller candidate order): batched when the scorer can batch."""
        score_many = getattr(self.scorer, "score_many", None)
        return score_many(list(prompts)) if score_many else [self.scorer.score(p) for p in prompts]

    def calculate_loss(self, interaction):
        raise LRGDError("LRGD has no trainable weights: use LRGDTrainer, whose fit prepares demonstrations")

    def full_sort_predict(self, interaction):
        raise LRGDError("LRGD ranks sampled candidates: set eval_args mode to uni19 or pop19, not full")

    @torch.no_grad()
    def predict(self, interaction) -> torch.Tensor:
        """Scores for RecBole's uniN/popN blocks: rows grouped by user, the label never read."""
        users = interaction[self.USER_ID].cpu().numpy()
        items = interaction[self.ITEM_ID].cpu().numpy()
        seqs = interaction[self.ITEM_SEQ].cpu().numpy()
        lens = interaction[self.ITEM_SEQ_LEN].cpu().numpy()
        scores = np.zeros(len(users), dtype=np.float64)
        zero_shot = np.zeros(len(users), dtype=np.float64)
        order = list(dict.fromkeys(users.tolist()))  # users in order of first appearance
        step = max(1, int(getattr(self.scorer, "user_batch_size", 1) or 1))
        for start in range(0, len(order), step):  # a chunk of users: their prompts are scored together
            chunk = [(user, np.flatnonzero(users == user)) for user in order[start: start + step]]
            prompts, zero_shot_prompts = [], []  # the latter: (index in chunk, zero-shot prompt)
            for k, (user, rows) in enumerate(chunk):
                history = seqs[rows[0], : lens[rows[0]]]
                demo_users = self.demo_users_for(user, history)
                prompts.append(self.user_prompt(user, history, items[rows], demo_users))
                if self.track_effect and demo_users:
                    zero_shot_prompts.append((k, self.user_prompt(user, history, items[rows], [])))
            got = self.score_prompts(prompts + [p for _, p in zero_shot_prompts])
            for (_, rows), user_scores in zip(chunk, got):
                scores[rows] = user_scores
                zero_shot[rows] = user_scores  # a user without demonstrations: zero-shot is the same prompt
            for (k, _), user_scores in zip(zero_shot_prompts, got[len(prompts):]):
                zero_shot[chunk[k][1]] = user_scores
            if self.progress is not None:
                self.progress(len(chunk))
        if self.track_effect:
            self._effect_records.append((scores, zero_shot))
        return torch.from_numpy(scores).float().to(interaction[self.ITEM_ID].device)

    def pop_effect_records(self) -> List[tuple]:
        """(with-demonstration, zero-shot) row scores of the predict calls since the last pop."""
        records, self._effect_records = self._effect_records, []
        return records

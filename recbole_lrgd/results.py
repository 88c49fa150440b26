"""What a run reports, as plain typed values: metrics, timings, users, the candidates' digest and, for LRGD, what
its fit chose and how its scores were found. No live object (model, loader, trainer) is inside."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from recbole_lrgd.evaluator.slices import Slices
from recbole_lrgd.llm.counts import ScoreCounts
from recbole_lrgd.optimizer.result import FitResult


@dataclass(frozen=True)
class RunResult:
    """One model's run on one dataset (``quick_start.run``)."""

    model: str
    dataset: str
    test_result: Dict[str, float]
    best_valid_score: Optional[float]
    valid_score_bigger: bool
    best_valid_result: Optional[Dict[str, float]]
    fit_time: float  # seconds; a kept RecBole model's (trained_models.fit_once): its training's, whichever run loads it
    eval_time: float
    test_users: int
    candidates: str  # a digest of the evaluated users' candidate sets: equal across runs = the same candidates
    test_per_user: Dict[str, Dict[int, float]] = field(default_factory=dict)  # "ndcg@10" -> user -> value
    retriever_time: Optional[float] = None  # candidate_source: seconds to train or load the retriever
    target_in_top_n: Optional[float] = None  # candidate_source: the share of users whose held-out item is in the N
    rerank_top: Optional[int] = None  # candidate_source: N
    demonstrations: str = ""  # LRGD: which demonstrations users saw, in words
    global_demo_users: Tuple[int, ...] = ()  # LRGD: the users of a global set (none: per-user or zero-shot)
    fit: Optional[FitResult] = None  # LRGD with demo_mode lrgd: the optimizer's choice and stage seconds
    score_counts: Optional[ScoreCounts] = None  # LRGD: score-cache hits and misses, generate-mode parsing
    prior_weight: Optional[float] = None  # prior_model: the weight of the prior's z-scores (auto: the one chosen)
    slices: Optional[Slices] = None  # slices: True: each test user's slices (evaluator/slices.py)

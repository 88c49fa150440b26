"""Which scorer a ``scorer_mode`` runs: ``LLMScorer`` (likelihood, verbalizer, ``llm/scorer.py``) or
``GenerateScorer`` (``llm/generate.py``, built on the same ``Scorer``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from recbole_lrgd.llm.batching import make_batching
from recbole_lrgd.llm.generate import GenerateScorer
from recbole_lrgd.llm.score_cache import ScoreCache
from recbole_lrgd.llm.scorer import LLMScorer, Scorer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def make_scorer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, mode: str, candidate_batch_size: int,
                user_batch_size: Union[int, str], score_cache: Optional[ScoreCache], model_id: str, max_new_tokens: int,
                match_threshold: float, title_score: str, title_score_tokens: Optional[int]) -> Scorer:
    """The scorer for ``mode``, given the settings its mode uses (their defaults live in
    properties/model/LRGD.yaml); ``user_batch_size`` is a row count or ``auto`` (``llm/batching.py``)."""
    batching = make_batching(user_batch_size, model)
    if mode == "generate":
        return GenerateScorer(model, tokenizer, batching=batching, score_cache=score_cache,
                              model_id=model_id, max_new_tokens=max_new_tokens, match_threshold=match_threshold)
    return LLMScorer(model, tokenizer, mode, candidate_batch_size, batching=batching,
                     score_cache=score_cache, model_id=model_id, title_score=title_score,
                     title_score_tokens=title_score_tokens)

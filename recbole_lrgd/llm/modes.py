"""Which scorer a ``scorer_mode`` runs: ``LLMScorer`` (likelihood, verbalizer, ``llm/scorer.py``) or
``GenerateScorer`` (``llm/generate.py``, built on the same ``Scorer``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from recbole_lrgd.llm.batching import make_batching
from recbole_lrgd.llm.generate import GenerateScorer
from recbole_lrgd.llm.score_cache import ScoreCache
from recbole_lrgd.llm.scorer import LLMScorer, Scorer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from recbole_lrgd.settings import ScorerSettings


def make_scorer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ScorerSettings,
                score_cache: Optional[ScoreCache] = None, model_id: str = "") -> Scorer:
    """The scorer of ``settings.scorer_mode``, with the settings its mode reads; its scores are cached in
    ``score_cache`` under the model's identity ``model_id`` where given."""
    s = settings
    batching = make_batching(s.user_batch_size, model)
    if s.scorer_mode == "generate":
        return GenerateScorer(model, tokenizer, batching=batching, score_cache=score_cache, model_id=model_id,
                              max_new_tokens=s.max_new_tokens, match_threshold=s.title_match_threshold)
    return LLMScorer(model, tokenizer, s.scorer_mode, s.candidate_batch_size, batching=batching,
                     score_cache=score_cache, model_id=model_id, title_score=s.title_score,
                     title_score_tokens=s.title_score_tokens)

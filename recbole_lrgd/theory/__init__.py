"""LRGD's theory made checkable: ICL in one attention layer = one gradient step on a dual model.

``equivalence_table`` takes a real Llama-family model and a prompt split into context,
demonstrations and query, and reports per layer and head how exactly the dual model reproduces
the layer's attention (``docs/theory.md``; the paper's section 2). ``demo_update_norms`` gives the size of each
demonstration's share of dW_ICL, a diagnostic (LRGD's optimizer does not read it). The pure math lives in
``dual`` (no model needed), model access in ``extract``, prompt splitting in ``spans``.
Run ``python -m recbole_lrgd.theory --help`` for the CLI.
"""
from recbole_lrgd.theory.dual import (
    apply_rope, causal_exp_attention, causal_linear_attention, causal_softmax_attention,
    center_and_balance, demonstration_norms, dual_loss, dual_model_outputs, gaussian_projection,
    gradient_step, log_positive_features, positive_random_features, random_feature_dual,
    relative_errors, rotate_half,
)
from recbole_lrgd.theory.extract import (
    AttentionWeights, HeadStates, LayerCapture, capture_layers, extract_attention_weights,
    project_heads, reconstruct_attention_output, rope_tables,
)
from recbole_lrgd.theory.spans import (
    PromptSplit, find_char_spans, parse_marked_prompt, split_marked_prompt, split_prompt,
    token_spans_from_char_spans,
)
from recbole_lrgd.theory.table import (
    DEFAULT_NUM_FEATURES, demo_update_norms, equivalence_table, format_summary, format_table,
    head_equivalence, summarize,
)

__all__ = [
    "apply_rope", "rotate_half", "causal_exp_attention", "causal_linear_attention",
    "causal_softmax_attention", "center_and_balance", "demonstration_norms", "dual_loss",
    "dual_model_outputs", "gaussian_projection", "gradient_step", "log_positive_features",
    "positive_random_features", "random_feature_dual", "relative_errors",
    "AttentionWeights", "HeadStates", "LayerCapture", "capture_layers", "extract_attention_weights",
    "project_heads", "reconstruct_attention_output", "rope_tables",
    "PromptSplit", "find_char_spans", "parse_marked_prompt", "split_marked_prompt", "split_prompt",
    "token_spans_from_char_spans",
    "DEFAULT_NUM_FEATURES", "demo_update_norms", "equivalence_table", "format_summary",
    "format_table", "head_equivalence", "summarize",
]

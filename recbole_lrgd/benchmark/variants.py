"""The benchmark's variants and protocols: which RecBole model and which config keys a row runs.

``VARIANTS`` names the listed rows (LRGD's demonstration modes and RecBole's baselines); a re-ranking
row, ``<Retriever>>LRGD-<mode>[@<blend>]`` or ``<Retriever>>alone``, and a fusion row on sampled candidates,
``<Prior>+LRGD-<mode>[@<weight>]``, are parsed by ``resolve_variant``.
``PROTOCOLS`` says what each protocol (``sampled``, ``full``) sets for every row and which metrics its
tables show; ``check_variant`` refuses a variant the protocol cannot run, and ``variant_config`` gives a
row's model and final config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import yaml

from recbole_lrgd.errors import LRGDError
from recbole_lrgd.model_names import did_you_mean, recbole_model
from recbole_lrgd.properties_files import shipped_defaults
from recbole_lrgd.settings import RULES
from recbole_lrgd.validate import FULL_EVAL_ARGS

# variant name -> (RecBole model, config keys of the variant); baselines keep RecBole's defaults
VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "LRGD-zero-shot": ("LRGD", {"demo_mode": "none"}),
    "LRGD-random": ("LRGD", {"demo_mode": "random"}),
    "LRGD-nearest": ("LRGD", {"demo_mode": "nearest"}),
    "LRGD-stage1": ("LRGD", {"demo_mode": "lrgd", "lrgd_stages": 1}),
    "LRGD-stage1+2": ("LRGD", {"demo_mode": "lrgd", "lrgd_stages": 2}),
    "Pop": ("Pop", {}),
    "BPR": ("BPR", {}),
    "SASRec": ("SASRec", {}),
    "GRU4Rec": ("GRU4Rec", {}),
    "BERT4Rec": ("BERT4Rec", {}),
}
# re-ranking variants (full protocol) and fusion variants (sampled), parsed by resolve_variant rather than listed
RERANK_GRAMMAR = "<Retriever>>LRGD-<mode>[@<blend>] or <Retriever>>alone"
FUSION_GRAMMAR = "<Prior>+LRGD-<mode>[@<weight>] (weight auto when not given)"
FUSION_VALID_USERS = 300  # validation users an auto weight is chosen on (LRGD's valid_users in a fusion row)
RECOMMENDED = "Pop+LRGD-nearest"  # the setup docs/usage.md recommends without a trained model: a default row
ALONE = "alone"
# <mode> of LRGD-<mode> -> LRGD's keys: those of the LRGD variants above, and lrgd (the optimizer, LRGD.yaml's stages)
RERANK_MODES = {**{name[len("LRGD-"):]: keys for name, (model, keys) in VARIANTS.items() if model == "LRGD"},
                "lrgd": {"demo_mode": "lrgd"}}

METRICS = [("hit@1", "Hit@1"), ("hit@5", "Hit@5"), ("hit@10", "Hit@10"), ("ndcg@5", "NDCG@5"),
           ("ndcg@10", "NDCG@10"), ("mrr@10", "MRR@10"), ("effectd", "EffectD")]
PLOT_METRICS = ["hit@10", "ndcg@10", "mrr@10"]
FULL_METRICS = [("recall@10", "Recall@10"), ("ndcg@10", "NDCG@10"), ("mrr@10", "MRR@10"),
                ("target_in_top_n", "in top-N")]


@dataclass(frozen=True)
class Protocol:
    """What a protocol sets for every row, and what its tables show."""

    config: Dict[str, Any]  # config keys of every row
    metrics: List[Tuple[str, str]]  # (row key, label): the table's metric columns
    plot: List[str]  # the row keys the bar chart shows
    models: List[str]  # the variants run when none are named
    full_ranking: bool  # re-ranking variants run, LRGD on sampled candidates does not


PROTOCOLS = {
    "sampled": Protocol({}, METRICS, PLOT_METRICS, [*VARIANTS, RECOMMENDED], full_ranking=False),
    "full": Protocol({"eval_args": FULL_EVAL_ARGS, "metrics": ["Recall", "NDCG", "MRR"], "topk": [10]},
                     FULL_METRICS, ["recall@10", "ndcg@10", "mrr@10"],
                     ["Pop", "BPR", "SASRec", "BPR>alone", "BPR>LRGD-zero-shot", "SASRec>alone",
                      "SASRec>LRGD-zero-shot"], full_ranking=True),
}


def _check_model(name: str, model: str, grammar: str) -> None:
    if recbole_model(model) is None:
        raise LRGDError(f"unknown benchmark variant {name!r}: {model!r} is not a RecBole model name "
                        f"(Pop, BPR, SASRec...) in {grammar}{did_you_mean(model)}")


def _weight(name: str, text: str, what: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    rule = RULES["rerank_blend"]  # a blend or a fusion weight: a number in [0, 1]
    if not rule.ok(weight):  # nan too
        raise LRGDError(f"benchmark variant {name!r}: the {what} after @ must be {rule.expected}, not {text!r}")
    return weight


def _lrgd_mode(name: str, ranker: str, alone: bool) -> Dict[str, Any]:
    """LRGD's keys of ``LRGD-<mode>`` in a combined variant's name (a re-ranking one may say ``alone`` instead)."""
    mode = ranker[len("LRGD-"):] if ranker.startswith("LRGD-") else None
    if mode not in RERANK_MODES:
        expected = f"neither {ALONE} nor LRGD-<mode>" if alone else "not LRGD-<mode>"
        raise LRGDError(f"unknown benchmark variant {name!r}: {ranker!r} is {expected} "
                        f"with <mode> one of {', '.join(RERANK_MODES)}")
    return dict(RERANK_MODES[mode])


def _fusion(name: str) -> Tuple[str, Dict[str, Any]]:
    """(model, keys) of ``<Prior>+LRGD-<mode>[@<weight>]``: LRGD's scores fused with the prior's (``prior_model``)."""
    prior, _, ranker = name.partition("+")
    _check_model(name, prior, FUSION_GRAMMAR)
    ranker, at, weight = ranker.partition("@")
    keys = {"prior_model": prior, **_lrgd_mode(name, ranker, alone=False),
            "prior_weight": _weight(name, weight, "weight") if at else "auto"}
    return "LRGD", keys


def resolve_variant(name: str) -> Tuple[str, Dict[str, Any]]:
    """(RecBole model, the variant's config keys) of a name of ``VARIANTS`` or of a re-ranking variant:
    ``<Retriever>>LRGD-<mode>[@<blend>]`` (LRGD in ``RERANK_MODES[mode]`` re-ranks the RecBole model's top
    ``rerank_top``, with ``rerank_blend`` <blend> where given) or ``<Retriever>>alone`` (``rerank_blend`` 1:
    the retriever's order, the user's history excluded, and no LLM scoring). A bad name is an ``LRGDError``."""
    if name in VARIANTS:
        return VARIANTS[name]
    if "+" in name and ">" not in name:
        return _fusion(name)
    retriever, sep, ranker = name.partition(">")
    if not sep:
        raise LRGDError(f"unknown benchmark variant {name!r}: use one of {', '.join(VARIANTS)}, {RERANK_GRAMMAR}, "
                        f"or {FUSION_GRAMMAR}")
    _check_model(name, retriever, RERANK_GRAMMAR)
    ranker, at, blend = ranker.partition("@")
    if ranker == ALONE:
        if at:
            raise LRGDError(f"benchmark variant {name!r}: {ALONE} is the retriever's own order (blend 1), "
                            "it takes no @")
        return "LRGD", {"candidate_source": retriever, "demo_mode": "none", "rerank_blend": 1.0}
    keys = {"candidate_source": retriever, **_lrgd_mode(name, ranker, alone=True)}
    if at:
        keys["rerank_blend"] = _weight(name, blend, "blend")
    return "LRGD", keys


def check_variant(name: str, protocol: str) -> None:
    """A variant the protocol can run: re-ranking ones rank the whole catalogue, plain LRGD ones sampled
    candidates (``LRGDError`` otherwise, as for a bad name)."""
    model, keys = resolve_variant(name)
    if "candidate_source" in keys and not PROTOCOLS[protocol].full_ranking:
        raise LRGDError(f"benchmark variant {name!r} re-ranks a full ranking: run it with --protocol=full")
    if "prior_model" in keys and PROTOCOLS[protocol].full_ranking:
        raise LRGDError(f"benchmark variant {name!r} fuses scores of sampled candidates: run it without "
                        f"--protocol=full (there, re-rank: {name.replace('+', '>')})")
    if model == "LRGD" and "candidate_source" not in keys and PROTOCOLS[protocol].full_ranking:
        raise LRGDError(f"benchmark variant {name!r} ranks sampled candidates: with --protocol=full give LRGD a "
                        f"retriever to re-rank, e.g. BPR>{name}")


def variant_config(name: str, config_dict: Dict[str, Any], config_files: Sequence[str],
                   effectd: bool = True) -> Tuple[str, Dict[str, Any]]:
    """(RecBole model, config_dict) of one variant: the shared config, then the variant's keys.
    LRGD variants with demonstrations also report EffectD unless the user's config sets metrics."""
    model, overrides = resolve_variant(name)
    cfg = {**config_dict, **overrides}
    if model == "LRGD":  # valid_users is for the baselines' early stopping; LRGD would LLM-score them all
        cfg["valid_users"] = None
        if "candidate_source" in overrides or "prior_model" in overrides:  # its retriever (prior) stops early
            cfg["retriever_valid_users"] = config_dict.get("valid_users")  # on the users its baseline row does
        if overrides.get("prior_weight") == "auto":  # chosen on validation users' LLM scores
            cfg["valid_users"] = FUSION_VALID_USERS
    if effectd and model == "LRGD" and overrides.get("demo_mode") != "none" and not _sets_metrics(
            config_dict, config_files):
        cfg["metrics"] = [*shipped_defaults("overall.yaml")["metrics"], "EffectD"]
    return model, cfg


def _sets_metrics(config_dict: Dict[str, Any], config_files: Sequence[str]) -> bool:
    if "metrics" in config_dict:
        return True
    for path in config_files:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue  # run() reports a bad file as a one-line error
        if isinstance(loaded, dict) and "metrics" in loaded:
            return True
    return False

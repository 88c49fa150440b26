"""The study's design (``benchmarks/study.py``): its conditions, each a way to give users demonstrations, and its
parts, each conditions and the populations they are scored on. ``study.py`` scores them; ``study_report.py`` reads
which stores each part has.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from recbole_lrgd.data.demonstrations import DemoChoice
from recbole_lrgd.settings import Changes, key_fields

HERE = os.path.dirname(os.path.abspath(__file__))
Study = Any  # benchmarks/study.py's Study, which imports this module: a condition reads its pool, a fit calls its fit

# optimizer profiles beside the YAML defaults ("default"): name -> the file of the LRGD.yaml keys it changes
PROFILES = {name: os.path.join(HERE, f"study_profile{suffix}.yaml")
            for name, suffix in (("study", ""), ("compact", "_compact"))}
SEED = 2020
EFFECT_TEST_USERS = 500  # the effect part's test users: the first 500 of the seeded order


# -- conditions --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Condition:
    """A named way to give users demonstrations; ``choose(study, ranker)`` returns the ``DemoChoice`` (and for
    optimizer conditions the fit's seconds; an optimizer fits with ``ranker``, the condition's own). Whatever changes its prompts must be in its store key (its choice,
    num_demos, ``prompt``): conditions whose keys differ in the name alone share their scores."""

    name: str
    choose: Callable[["Study", Any], Tuple[DemoChoice, float]]
    num_demos: int = 2  # demonstrations a per-user choice retrieves
    prompt: Tuple[Tuple[str, Any], ...] = ()  # prompt keys set otherwise than the YAML (demo_format, title_score)
    stage1: Optional[Callable[["Study", Any], Tuple[DemoChoice, float]]] = None  # an optimizer's: its fit's stage 1 alone

    def named(self, prefix: str, **keys: Any) -> "Condition":
        """The same demonstrations under other prompt keys (named ``prefix-<name>``)."""
        return dataclasses.replace(self, name=f"{prefix}-{self.name}", prompt=tuple(sorted(keys.items())))


def zero_shot() -> Condition:
    return Condition("zero-shot", lambda st, ranker: (DemoChoice(), 0.0))


def random_set(draw: int, k: int = 2) -> Condition:
    """A seeded random global set of ``k`` pool users (draw 0 is the product's ``demo_mode: random``)."""
    return Condition(f"random{k}-d{draw}", lambda st, ranker: (DemoChoice.chosen(
        [(u, 0) for u in st.pool.random_users(k, SEED + 1000 * draw)], False), 0.0), k)


def nested_set(draw: int, k: int, cut: int = 0, of: int = 4) -> Condition:
    """The first ``k`` of a seeded random set of ``of`` pool users, each demonstration's ``cut`` oldest
    history items removed: sets that differ only in K, or only in history length."""
    name = f"nested{k}" + (f"-cut{cut}" if cut else "") + f"-d{draw}"
    return Condition(name, lambda st, ranker: (DemoChoice.chosen(
        [(u, cut) for u in st.pool.random_users(of, SEED + 5000 + 1000 * draw)[:k]], False), 0.0), k)


def nearest(k: int = 2) -> Condition:
    return Condition(f"nearest{k}", lambda st, ranker: (DemoChoice(None, per_user=True), 0.0), k)


def anchor_set(draw: int, k: int = 2) -> Condition:
    """A nearest-style global set: the ``k`` pool users whose items overlap most with a seeded anchor's."""
    def choose(st: "Study", ranker: Any) -> Tuple[DemoChoice, float]:
        anchor = st.pool.random_users(1, SEED + 7000 + draw)[0]
        users = st.pool.nearest_users(st.pool.sequences[anchor], k, exclude=anchor)
        return DemoChoice.chosen([(u, 0) for u in users], False), 0.0
    return Condition(f"anchor{k}-d{draw}", choose, k)


def optimized(stages: int, seed: int, profile: str = "default", **overrides) -> Condition:
    """The two-stage optimizer's set (``profile``: "default", the YAML's keys, or a name of ``PROFILES``),
    fitted on training users with its own probes; its state is kept beside the stores (a fit resumes)."""
    if profile != "default" and profile not in PROFILES:
        raise ValueError(f"unknown optimizer profile {profile!r}: default or one of {', '.join(PROFILES)}")
    def suffix(keys: Dict[str, Any]) -> str:
        return "".join(f"-{k}{v}" for k, v in sorted(keys.items()))
    name = f"lrgd-{profile}-s{stages}{suffix(overrides)}-seed{seed}"  # the seed last: the report pools seeds
    # stage 1 and 1+2 share one fit: its state has no stage, nor the keys of how a finished fit is read
    fitted = {k: v for k, v in overrides.items() if key_fields()[k].metadata["changes"] is not Changes.NOTHING}
    fit_name = f"lrgd-{profile}{suffix(fitted)}-seed{seed}"

    def choose(st: "Study", ranker: Any) -> Tuple[DemoChoice, float]:
        return st.fit(ranker, fit_name, stages, seed, profile, overrides)

    def stage1(st: "Study", ranker: Any) -> Tuple[DemoChoice, float]:
        return st.fit(ranker, fit_name, 1, seed, profile, overrides)
    return Condition(name, choose, stage1=stage1)


def effect_sets() -> List[Condition]:
    """Claim (b)'s 30 sets: 20 random, 5 anchor (nearest-style), per-user nearest and 4 optimizer fits,
    interleaved so that any finished prefix holds every kind."""
    others = [nearest()] + [c for d in range(5) for c in
                            ([anchor_set(d), optimized(2, SEED + d)] if d < 4 else [anchor_set(d)])]
    randoms = [random_set(d) for d in range(20)]
    return [c for k in range(20) for c in ([randoms[k]] + ([others[k]] if k < len(others) else []))]


def single_sets(n: int = 20) -> List[Condition]:
    """The per-demonstration form: one random pool user's demonstration alone."""
    return [random_set(d, k=1) for d in range(n)]


def bias_conditions(draws: int = 3) -> List[Condition]:
    """Why demonstrations hurt: K = 1, 2, 4 (random draws and nearest) and shorter demonstration histories
    (10, 5 and 2 of the 10 items shown), each with the copy-bias populations."""
    per_draw = [[nested_set(d, 1), nested_set(d, 2), nested_set(d, 4), nested_set(d, 2, cut=5),
                 nested_set(d, 2, cut=8)] for d in range(draws)]
    return per_draw[0] + [nearest(1), nearest(2), nearest(4)] + [c for draw in per_draw[1:] for c in draw]


def format_conditions(draws: int = 3) -> List[Condition]:
    """Other demonstration formats beside today's next_item (random2-d*, nearest2: their test stores are the
    effect part's), on the same demonstrations."""
    base = [c for d in range(draws) for c in ([random_set(d)] + ([nearest()] if d == 0 else []))]
    return [v for c in base for v in (c, c.named("listed", demo_format="listed"),
                                      c.named("contrast", demo_format="contrast"))]


def scorer_conditions() -> List[Condition]:
    """Other reductions of a title's token log-probs, each on zero-shot's prompts and on the product's random
    set's, then the mean of both, zero-shot and random2-d0 (stored already where the effect part ran; else read
    from the cache the sum's pass filled). The report derives a length prior from the mean and the sum."""
    return [c.named(name, **keys) for name, keys in (("sum", {"title_score": "sum"}),
                                                     ("first3", {"title_score": "first", "title_score_tokens": 3}))
            for c in (zero_shot(), random_set(0))] + [zero_shot(), random_set(0)]  # --shard=i/2: one prompt set


def method_conditions() -> List[Condition]:
    """Claim (c): zero-shot, 5 random draws, nearest, and the study profile's stage 1 and stage 1+2, the latter
    also with ``fallback_zero_shot`` (the same fit, read otherwise: no scoring where it falls back or not)."""
    return ([zero_shot()] + [random_set(d) for d in range(5)] + [nearest()] +
            [optimized(1, SEED, "study"), optimized(2, SEED, "study"),
             optimized(2, SEED, "study", fallback_zero_shot=True)])


def compact_method_conditions() -> List[Condition]:
    """Claim (c) for a model too slow for the study profile: zero-shot, 3 random draws, nearest and the compact
    profile's stage 1+2 (``benchmarks/study_profile_compact.yaml``)."""
    return [zero_shot()] + [random_set(d) for d in range(3)] + [nearest(), optimized(2, SEED, "compact")]


def confirm_conditions() -> List[Condition]:
    """The candidate default beside today's: zero-shot, the product's random set (random2-d0, ``demo_mode: random``)
    and per-user nearest with K = 2 and 4, on any dataset (the bias part chose nearest4 on ml-100k)."""
    return [zero_shot(), random_set(0), nearest(2), nearest(4)]


ABLATIONS = ({"perturb_num": 0}, {"lambda_std": 0}, {"lambda_redundancy": 0}, {"lambda_copy": 0}, {"lambda_reg": 0})


def ablation_conditions(seeds: int = 2) -> List[Condition]:
    """What each part of the optimizer contributes: the YAML-default fit (the effect part's lrgd-default-s2, 4 seeds)
    without perturbations, without each regularizer, and stage 1 alone, on its first ``seeds`` seeds."""
    return [c for d in range(seeds) for c in
            [optimized(2, SEED + d, **off) for off in ABLATIONS] + [optimized(1, SEED + d)]]


# -- parts -------------------------------------------------------------------------------------
COPY = ("test", "targets", "targets0")  # NDCG@10 and the copy bias
# part -> (its conditions, the populations each is scored on, whether its test users are --users rather than
# the effect part's first 500)
PARTS: Dict[str, Tuple[Callable[[], List[Condition]], Tuple[str, ...], bool]] = {
    "effect": (lambda: [zero_shot()] + effect_sets(), ("probe", "test"), False),  # claim (b)
    "single": (single_sets, ("probe", "test"), False),  # claim (b), per demonstration
    "bias": (bias_conditions, COPY, False),  # copy bias, K, history length
    "format": (format_conditions, COPY, False),  # demonstration formats
    "scorer": (scorer_conditions, ("test",), False),  # title-score reductions
    "methods": (method_conditions, ("test",), True),  # claim (c)
    "methods-compact": (compact_method_conditions, ("test",), True),  # claim (c) for a larger, slower model
    "ablation": (ablation_conditions, ("test",), False),  # claim (c), part by part
    "confirm": (confirm_conditions, ("test",), True),  # a candidate default on the confirming datasets
    "zero-shot": (lambda: [zero_shot()], ("test",), True),  # each model's zero-shot NDCG@10
}
Task = Tuple[Condition, List[Tuple[str, Optional[int]]]]  # a condition and its (population, users) to score


def part_tasks(part: str, users: Optional[int], effect_users: int = EFFECT_TEST_USERS) -> List[Task]:
    """What a part scores: each condition on each of its populations, the first ``users`` test users (all
    probes)."""
    conditions, populations, own_users = PARTS[part]
    size = users if own_users else effect_users
    return [(c, [(p, None if p == "probe" else size) for p in populations]) for c in conditions()]

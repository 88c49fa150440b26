"""docs/RESULTS.md's section "Where the LLM helps", from the side-by-side benchmark's stores.

``benchmarks/out/slices/run.sh`` runs, per dataset, the plain rows (Pop, BPR, SASRec, LRGD zero-shot and
nearest) and the fused ones (``<Prior>+LRGD-nearest``, the weight chosen on validation users) with
``--slices=True``; its stores keep every row's per-user NDCG@10 and every test user's slices, which is all this
section reads. A dataset or row not stored yet is said to be so, never estimated.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from recbole_lrgd.benchmark.report import per_user, slice_section
from recbole_lrgd.benchmark.store import load_slices
from recbole_lrgd.evaluator.slices import Slices, slice_differences
from recbole_lrgd.evaluator.per_user import paired_bootstrap
from study_report import fmt_ci, mean_ci, pyplot, save_figure

FOLDER = os.path.join("benchmarks", "out", "slices")
DATASETS = ("amazon-beauty", "amazon-toys-games", "amazon-video-games-18", "ml-100k")
AMAZON = DATASETS[:3]
LLM = "LRGD-nearest"
PRIORS = ("Pop", "BPR", "SASRec")
ROWS = ("Pop", "BPR", "SASRec", "LRGD-zero-shot", LLM, *(f"{p}+{LLM}" for p in PRIORS))
Rows = Dict[str, dict]


def load(folder: str, dataset: str) -> Tuple[Rows, Optional[Slices]]:
    """The stored rows of ``ROWS`` (of several stored under one name, the one with the most users) and the slices."""
    path = os.path.join(folder, f"compare_{dataset}.json")
    rows: Rows = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for row in json.load(f)["rows"]:
                if row["variant"] in ROWS and row.get("per_user_ndcg10") and \
                        len(row["per_user_ndcg10"]) > len(rows.get(row["variant"], {}).get("per_user_ndcg10", {})):
                    rows[row["variant"]] = row
    return {v: rows[v] for v in ROWS if v in rows}, load_slices(os.path.join(folder, f"compare_{dataset}.slices.json"))


def diff(rows: Rows, a: str, b: str) -> Optional[Tuple[float, float, float, int]]:
    """Mean NDCG@10 of a - b over their common users, its 95% paired bootstrap interval and the users."""
    if a not in rows or b not in rows:
        return None
    x, y = per_user(rows[a]), per_user(rows[b])
    mean, lo, hi, _ = paired_bootstrap(x, y)
    return mean, lo, hi, len(set(x) & set(y))


def fusion_table(measured: Dict[str, Tuple[Rows, Slices]]) -> List[str]:
    """Per dataset and prior: the weight chosen, fused - prior alone and fused - LLM alone."""
    out = ["| dataset | prior | weight | fused NDCG@10 | fused − prior | fused − LLM alone | users |",
           "|---|---|---|---|---|---|---|"]
    for dataset, (rows, _) in measured.items():
        for prior in PRIORS:
            fused = f"{prior}+{LLM}"
            vs_prior, vs_llm = diff(rows, fused, prior), diff(rows, fused, LLM)
            if vs_prior is None or vs_llm is None:
                continue
            out.append(f"| {dataset} | {prior} | {rows[fused].get('prior_weight', float('nan')):g} | "
                       f"{rows[fused]['ndcg@10']:.4f} | {fmt_ci(*vs_prior[:3], sign=True)} | "
                       f"{fmt_ci(*vs_llm[:3], sign=True)} | {vs_prior[3]} |")
    return out


def above_zero(rows: Rows, slices: Slices, a: str, b: str) -> Dict[Tuple[str, str], Tuple[float, float, float, int]]:
    """The slices where a - b has its whole 95% interval above 0: (family, slice) -> (mean, lo, hi, users)."""
    if a not in rows or b not in rows:
        return {}
    return {(family, name): d for family, by_name in slice_differences(per_user(rows[a]), per_user(rows[b]),
                                                                       slices).items()
            for name, d in by_name.items() if d[1] > 0}


def llm_wins(rows: Rows, slices: Slices, name: str, prior: Optional[str] = None) -> List[str]:
    """The slices where ``name`` (the LLM alone, or fused with ``prior``) beats BPR with its interval above 0, as
    'family slice +d [lo, hi] (n users)'. A fused row counts only where it beats its prior alone too: a win its
    prior makes alone (SASRec's, or Pop's on head items) is not the LLM's."""
    wins = above_zero(rows, slices, name, "BPR")
    if prior is not None:
        own = above_zero(rows, slices, name, prior)
        wins = {at: d for at, d in wins.items() if at in own}
    return [f"{family} {slice_} {fmt_ci(m, lo, hi, sign=True)} ({n} users)"
            for (family, slice_), (m, lo, hi, n) in wins.items()]


def verdict(dataset: str, rows: Rows, slices: Slices) -> str:
    """Whether the LLM, alone or fused, beats BPR anywhere, and whether fusion beats its prior."""
    if "BPR" not in rows or LLM not in rows:
        return f"- **{dataset}:** BPR's or the LLM's row is not stored yet: no verdict."
    judged = [(LLM, None)] + [(f"{p}+{LLM}", p) for p in PRIORS if p in rows]  # a fused row beside its prior
    wins = {name: llm_wins(rows, slices, name, prior) for name, prior in judged if name in rows}
    found = [f"{name} on {', '.join(w)}" for name, w in wins.items() if w]
    overall = diff(rows, LLM, "BPR")
    line = f"- **{dataset}:** " + (f"the LLM beats BPR where its interval is above 0 (a fused row where it also "
                                   f"beats its own prior): {'; '.join(found)}. " if found
                                   else "neither the LLM alone nor fused beats BPR with an interval above 0 on any "
                                        "slice (a fused row counting where it also beats its own prior). ")
    if overall:
        line += f"LLM alone − BPR overall: {fmt_ci(*overall[:3], sign=True)} over {overall[3]} users. "
    fused = [f"{p}+LLM − {p} {fmt_ci(*d[:3], sign=True)}" for p in PRIORS
             if (d := diff(rows, f"{p}+{LLM}", p)) is not None]
    missing = [v for v in ROWS if v not in rows]
    return line + ("Fusion: " + "; ".join(fused) + ". " if fused else "") + \
        (f"Not stored yet: {', '.join(missing)}." if missing else "")


def recommendation(measured: Dict[str, Tuple[Rows, Slices]]) -> List[str]:
    """The setups the evidence supports, by the page's rule (two Amazon datasets with intervals above 0),
    counted over the Amazon datasets whose rows the rule needs are stored."""
    def above(dataset: str, a: str, b: str) -> bool:
        d = diff(measured[dataset][0], a, b)
        return d is not None and d[1] > 0

    def stored(*variants: str) -> List[str]:
        return [d for d in AMAZON if d in measured and all(v in measured[d][0] for v in variants)]
    out = []
    for prior in ("BPR", "SASRec"):
        have = stored(prior, f"{prior}+{LLM}")
        wins = [d for d in have if above(d, f"{prior}+{LLM}", prior)]
        out.append(f"- {prior}+LLM beats {prior} alone with an interval above 0 on {len(wins)} of the {len(have)} Amazon "
                   f"datasets measured ({', '.join(wins) or 'none'}): "
                   + ("**recommended** where a trained model exists (`prior_model: " + prior + "`, opt-in)."
                      if len(wins) >= 2 else "not recommended on this evidence (it needs two)."))
    have = stored("Pop", LLM, f"Pop+{LLM}")
    pop = [d for d in have if above(d, f"Pop+{LLM}", "Pop") and above(d, f"Pop+{LLM}", LLM)]
    out.append(f"- Pop+LLM beats both Pop and the LLM alone on {len(pop)} of the {len(have)} Amazon datasets measured "
               f"({', '.join(pop) or 'none'}): " + ("**recommended** without a trained model (`prior_model: Pop`, "
                                                    "`prior_weight: auto`)." if len(pop) >= 2 else
                                                    "not recommended on this evidence (it needs two)."))
    return out


def plot(measured: Dict[str, Tuple[Rows, Slices]], path: str) -> None:
    """NDCG@10 by slice, one line per row, with 95% bootstrap intervals; one panel per dataset."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(measured), figsize=(4.2 * len(measured), 4), squeeze=False)
    for ax, (dataset, (rows, slices)) in zip(axes[0], measured.items()):
        names = [(f, n) for f, ns in slices.order.items() for n in ns]
        for k, (variant, row) in enumerate(rows.items()):
            values = per_user(row)
            for family in slices.order:  # a line per family: history slices, then popularity slices
                at = [j for j, (f, _) in enumerate(names) if f == family]
                cis = np.array([mean_ci([values[u] for u in slices.users(*names[j]) if u in values] or [np.nan])
                                for j in at])
                ax.errorbar(np.array(at) + (k - len(rows) / 2) * 0.04, cis[:, 0],
                            yerr=[cis[:, 0] - cis[:, 1], cis[:, 2] - cis[:, 0]], marker="o", ms=3, lw=1, capsize=2,
                            color=f"C{k}", label=variant if family == next(iter(slices.order)) else None)
        ax.set_xticks(range(len(names)), [n for _, n in names], rotation=45, ha="right", fontsize=7)
        ax.set_title(dataset, fontsize=9)
        ax.set_ylabel("NDCG@10")
    axes[0][0].legend(fontsize=6)
    save_figure(fig, path)


def section(folder: str = FOLDER, docs: str = "docs") -> List[str]:
    """The section's lines (and its plot under ``docs/results/``)."""
    out = ["## Where the LLM helps", "",
           "Per slice of test users, on the sampled protocol (1 target + 19 sampled negatives, the same for every "
           "row): users by training-history length (terciles of the evaluated users) and by the held-out item's "
           "training popularity (cold: ≤ 5 interactions; head: the most popular items holding 20% of the training "
           "interactions). Rows: Pop, BPR, SASRec as the benchmark trains them, LRGD zero-shot and nearest "
           "(K = 4, SmolLM2), and LRGD nearest fused with each baseline (`<Prior>+LRGD-nearest`: per user "
           "(1 − w) z(LLM) + w z(prior), w chosen from 0, 0.1 … 1 by NDCG@10 on 300 validation users). Intervals: "
           "95% paired bootstrap over users; a verdict tests six slices per row, without a correction for multiple "
           "comparisons. Commands: `bash benchmarks/out/slices/run.sh` (resumable).", ""]
    measured = {}
    for dataset in DATASETS:
        rows, slices = load(folder, dataset)
        if rows and slices is not None:
            measured[dataset] = (rows, slices)
    missing = [f"{d} ({', '.join(v for v in ROWS if v not in measured.get(d, ({}, None))[0]) or 'slices'})"
               for d in DATASETS if d not in measured or len(measured[d][0]) < len(ROWS)]
    if missing:
        out += [f"Not stored yet (dataset: rows): {'; '.join(missing)}.", ""]
    if not measured:
        return out
    for dataset, (rows, slices) in measured.items():
        users = max(len(r["per_user_ndcg10"]) for r in rows.values())
        out += [f"### {dataset} ({users} test users)"] + slice_section(list(rows.values()), slices)
    plot(measured, os.path.join(docs, "results", "where_llm_helps.png"))
    out += ["![NDCG@10 by slice](results/where_llm_helps.png)", ""]
    fusion = fusion_table(measured)
    out += ["### Fusion", ""] + (fusion if len(fusion) > 2 else ["No fused row stored yet."])
    out += ["", "### Verdicts", ""] + [verdict(d, *measured[d]) for d in measured]
    out += ["", "### What to use", ""] + recommendation(measured) + [""]
    return out

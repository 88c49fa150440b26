"""The benchmark's outputs from its rows: the markdown report and table, the CSV, the bar chart, and
the paired bootstrap lines that compare two variants' per-user NDCG@10.
"""
from __future__ import annotations

import csv
import io
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_lrgd.benchmark.variants import ALONE, PROTOCOLS
from recbole_lrgd.evaluator.slices import Slices, slice_differences, slice_means
from recbole_lrgd.evaluator.per_user import paired_bootstrap
from recbole_lrgd.whole_file import write_whole

CSV_TAIL = ["fit_time_s", "eval_time_s", "test_users", "candidates", "dataset", "config_hash"]
OPTIONAL_COLUMNS = {"effectd", "target_in_top_n"}  # shown in the markdown table only where some row has a value


def bootstrap_lines(rows: List[Dict[str, Any]], pairs: Sequence[Tuple[str, str]], seed: int = 0) -> List[str]:
    """'A vs B: NDCG@10 difference and its 95% paired bootstrap interval' for each pair present."""
    found = {r["variant"]: r.get("per_user_ndcg10") for r in rows}
    lines = []
    for a, b in pairs:
        if found.get(a) and found.get(b):
            mean, lo, hi, p = paired_bootstrap({int(u): v for u, v in found[a].items()},
                                               {int(u): v for u, v in found[b].items()}, seed=seed)
            lines.append(f"{a} vs {b}: NDCG@10 difference {mean:+.4f}, 95% paired bootstrap CI "
                         f"[{lo:+.4f}, {hi:+.4f}] over {len(found[a])} users (share of resamples <= 0: {p:.3f})")
    return lines


BOOTSTRAP_PAIRS = [("LRGD-stage1+2", "LRGD-random"), ("LRGD-stage1", "LRGD-random"),
                   ("LRGD-stage1+2", "LRGD-zero-shot"), ("LRGD-stage1+2", "LRGD-stage1")]


def bootstrap_pairs(protocol: str, variants: Sequence[str]) -> List[Tuple[str, str]]:
    """The pairs a report compares: ``BOOTSTRAP_PAIRS`` when sampled; in the full protocol each re-ranking of
    a retriever against that retriever alone (``X>LRGD-...`` vs ``X>alone``)."""
    if not PROTOCOLS[protocol].full_ranking:
        return list(BOOTSTRAP_PAIRS)
    pairs = []
    for variant in variants:
        retriever, sep, ranker = variant.partition(">")
        if sep and ranker != ALONE:
            pairs.append((variant, f"{retriever}>{ALONE}"))
    return pairs


def _fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value + 0.0:.{digits}f}".replace("-0.0000", "0.0000")


def markdown_table(rows: List[Dict[str, Any]], protocol: str = "sampled") -> str:
    show = [(k, label) for k, label in PROTOCOLS[protocol].metrics
            if k not in OPTIONAL_COLUMNS or any(r.get(k) is not None for r in rows)]
    retriever = any(r.get("retriever_time_s") is not None for r in rows)
    head = ["Model"] + [label for _, label in show] + ["retriever s"] * retriever + ["fit s", "eval s", "users"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"]] + [_fmt(r.get(k)) for k, _ in show]
        cells += [_fmt(r.get("retriever_time_s"), 1)] * retriever
        cells += [_fmt(r["fit_time_s"], 1), _fmt(r["eval_time_s"], 1), str(r["test_users"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _full_ranking_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """What the full protocol's table rests on: the users (all rows' per-user NDCG@10 cover the same ones)
    and, with re-rankings, what ``X>alone`` and "in top-N" are."""
    users = [set(r.get("per_user_ndcg10") or ()) for r in rows]
    same = "the same users for every row" if all(u == users[0] for u in users) else "the users differ between rows"
    lines = [f"{', '.join(map(str, sorted({r['test_users'] for r in rows})))} test users, {same}, each ranking "
             "the whole catalogue (RecBole's full mode).", ""]
    tops = sorted({r["rerank_top"] for r in rows if r.get("rerank_top") is not None})
    if tops:
        lines += [f"`X>LRGD-...`: LRGD re-ranks retriever X's top {'/'.join(map(str, tops))} (the user's history "
                  "excluded); `X>alone` is X's own order over the same items (rerank_blend 1, no LLM), the "
                  "retriever-alone row. in top-N: the share of test users whose held-out item is in X's top N "
                  "(a re-ranking can only reorder those). retriever s: training X, or loading its kept "
                  "checkpoint, in this run; a baseline row's fit s is its kept training's seconds, whichever run "
                  "loads it.", ""]
    return lines


def per_user(row: Dict[str, Any], metric: str = "ndcg@10") -> Dict[int, float]:
    """A row's per-user NDCG@10 (``ndcg@10``), or Hit@10 (``hit@10``): with one held-out item, a hit is an NDCG
    above 0."""
    values = {int(u): v for u, v in (row.get("per_user_ndcg10") or {}).items()}
    return values if metric == "ndcg@10" else {u: float(v > 0) for u, v in values.items()}


def slice_section(rows: List[Dict[str, Any]], slices: Slices, pairs: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """Per family, a table of NDCG@10 and Hit@10 per slice for every row (users per slice in the header), and for
    each pair of ``pairs`` the paired bootstrap interval of its NDCG@10 difference per slice."""
    rows = [r for r in rows if r.get("per_user_ndcg10")]
    out: List[str] = []
    for family, names in slices.order.items():
        sizes = {n: len(slices.users(family, n)) for n in names}
        out += [""] * (not out or out[-1] != "") + [
                f"NDCG@10 / Hit@10 by {family} slice (users per slice in the header):", "",
                "| Model | " + " | ".join(f"{n} ({sizes[n]})" for n in names) + " |", "|---|" + "---|" * len(names)]
        for r in rows:
            ndcg, hit = (slice_means(per_user(r, m), slices)[family] for m in ("ndcg@10", "hit@10"))
            out.append(f"| {r['variant']} | " + " | ".join(
                f"{_fmt(ndcg[n][0])} / {_fmt(hit[n][0], 3)}" if ndcg[n][1] else "–" for n in names) + " |")
        out.append("")
        for a, b in pairs:
            found = {r["variant"]: r for r in rows}
            if a in found and b in found:
                diffs = slice_differences(per_user(found[a]), per_user(found[b]), slices)[family]
                out.append(f"- {a} vs {b}, NDCG@10 difference by {family}: " + "; ".join(
                    f"{n} {m:+.4f} [{lo:+.4f}, {hi:+.4f}] ({k} users)" for n, (m, lo, hi, k) in diffs.items()))
    return out


def markdown_report(dataset: str, rows: List[Dict[str, Any]], failed: Dict[str, str],
                    protocol: str = "sampled", pairs: Sequence[Tuple[str, str]] = (),
                    slices: Optional[Slices] = None) -> str:
    out = [f"# Side-by-side benchmark: {dataset}", ""]
    digests = {r["candidates"] for r in rows}
    users = sorted({r["test_users"] for r in rows})
    if rows and PROTOCOLS[protocol].full_ranking:
        out += _full_ranking_lines(rows)
    elif rows:
        same = "the same candidate sets for every model" if len(digests) == 1 else \
            f"candidate sets differ between rows ({', '.join(sorted(digests))})"
        out += [f"{', '.join(map(str, users))} test users, {same}.", ""]
    out.append(markdown_table(rows, protocol))
    stages = [r for r in rows if r.get("stage1_s") is not None]
    if stages:
        out += ["", "Optimizer seconds (in fit): " + "; ".join(
            f"{r['variant']}: stage 1 {r['stage1_s']:.0f}" + (f", stage 2 {r['stage2_s']:.0f}" if r.get("stage2_s") is not None
                                                             else "") for r in stages)]
    weights = [f"{r['variant']}: {r['prior_weight']:g}" for r in rows if r.get("prior_weight") is not None]
    if weights:
        out += ["", "Prior weights (auto: chosen on validation users): " + "; ".join(weights)]
    boot = bootstrap_lines(rows, [*bootstrap_pairs(protocol, [r["variant"] for r in rows]), *pairs])
    if boot:
        out += [""] + [f"- {line}" for line in boot]
    if slices is not None:
        out += slice_section(rows, slices, pairs)
    for name, msg in failed.items():
        out.append(f"\n{name}: failed: {msg}")
    return "\n".join(out) + "\n"


def csv_columns(protocol: str = "sampled") -> List[str]:
    """The CSV's columns: variant and model, the protocol's metric columns (and, ranking the whole catalogue,
    the retriever's seconds), then ``CSV_TAIL``."""
    spec = PROTOCOLS[protocol]
    return ["variant", "model"] + [k for k, _ in spec.metrics] + ["retriever_time_s"] * spec.full_ranking + CSV_TAIL


def csv_text(rows: List[Dict[str, Any]], protocol: str = "sampled") -> str:
    columns = csv_columns(protocol)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def bar_chart(rows: List[Dict[str, Any]], dataset: str, path: str, protocol: str = "sampled") -> None:
    """The rows' metrics as a PNG at ``path``; skipped with one warning line where matplotlib is not installed
    (an optional extra: the tables are written without it)."""
    try:
        import matplotlib
    except ImportError:
        print(f"warning: no {path}: the bar chart needs matplotlib (pip install matplotlib, or the plugin's "
              "[bench] extra)", file=sys.stderr)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = PROTOCOLS[protocol]
    labels = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    width = 0.8 / len(spec.plot)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(rows)), 4.0))
    for k, metric in enumerate(spec.plot):
        values = [r.get(metric) or 0.0 for r in rows]
        ax.bar(x + (k - (len(spec.plot) - 1) / 2) * width, values, width, label=dict(spec.metrics)[metric])
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    top = max([r.get(m) or 0.0 for r in rows for m in spec.plot] + [0.01])
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("score")
    if spec.full_ranking:
        same = "full ranking"
    else:
        same = "same candidates" if len({r["candidates"] for r in rows}) == 1 else "candidates differ"
    ax.set_title(f"{dataset}: {', '.join(str(u) for u in sorted({r['test_users'] for r in rows}))} test users, {same}")
    ax.legend(loc="upper center", ncol=len(spec.plot), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_whole(path, buf.getvalue())

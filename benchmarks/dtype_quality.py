"""What bfloat16 and int8 cost in ranking quality: same users, same candidates, same prompts.

    OMP_NUM_THREADS=1 python benchmarks/dtype_quality.py --datasets=ml-100k,amazon-beauty --users=500 \\
        --data_path=../shared/data

Each dataset is scored three times with random demonstrations (2 demos: ``DEMONSTRATIONS``) and the default LLM,
once per dtype, with the score cache off: float32, bfloat16 and int8. int8 is this benchmark's own, not an
``llm_dtype``: the run is configured as float32 and the loaded model's linear layers, the LM head included,
are then dynamically quantized in place (``torch.ao.quantization.quantize_dynamic``: int8 weights, int8
activations per call, CPU only; everything between the linear layers stays float32). It is measured here
and not offered because it ranks worse than bfloat16 (`benchmarks/out/dtype_quality.md` has the figures).

Per dataset and comparison (bf16 - fp32, int8 - bf16, int8 - fp32) the report gives the Spearman
correlation of the per-candidate scores (pooled over all users' candidates, and the median of the
per-user correlations), the share of users whose target keeps its rank, each side's NDCG@10, and the
paired bootstrap 95% interval of the NDCG@10 difference over users: an interval below 0 means the
first-named dtype ranks worse. Ranks are counted from the scores, ties against the target.

Per-user scores go to benchmarks/out/dtype_quality/<dataset>-<dtype>-<settings hash>.npz after
every loader batch, so an interrupted run resumes (the hash is of the dtype's settings, so adding a dtype
leaves the others' stores where they were); the summary goes to benchmarks/out/dtype_quality.md.
"""
import argparse
import hashlib
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_lrgd.argv import run_script  # noqa: E402
from recbole_lrgd.data.chunks import user_rows  # noqa: E402
from recbole_lrgd.evaluator.per_user import ndcg_at, paired_bootstrap  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
DTYPES = ("float32", "bfloat16", "int8")
SHORT = {"float32": "fp32", "bfloat16": "bf16", "int8": "int8"}
PAIRS = (("bfloat16", "float32"), ("int8", "bfloat16"), ("int8", "float32"))  # reported as first - second
QUANTIZED = "int8"  # the benchmark's own dtype: a float32 run whose model is quantized after loading


def settings_for(dataset: str, dtype: str, users: int, data_path: str) -> dict:
    """The run's config overrides: defaults otherwise. ml-100k ships with RecBole (no data_path)."""
    cfg = {"llm_dtype": dtype, "eval_users": users, "score_cache": False, "show_progress": False,
           "state": "WARNING", "use_gpu": False}
    if data_path and os.path.isdir(os.path.join(data_path, dataset)):
        cfg["data_path"] = os.path.abspath(data_path)  # the store's key names the folder, however it was written
    return cfg


# the demonstrations the committed stores were scored with, pinned apart from the YAML's defaults so a rerun
# resumes them; the stores' keys (``cfg``) do not hold them
DEMONSTRATIONS = {"demo_mode": "random", "num_demos": 2}


def llm_settings(cfg: dict) -> dict:
    """The overrides RecBole's config gets: ``DEMONSTRATIONS`` where ``cfg`` names none, and for ``int8`` (no ``llm_dtype``) float32.
    ``cfg`` itself, with ``int8``, stays the store's key."""
    return {**DEMONSTRATIONS, **cfg, **({"llm_dtype": "float32"} if cfg["llm_dtype"] == QUANTIZED else {})}


def quantize_linear(model) -> None:
    """Replace ``model``'s ``nn.Linear`` layers, in place, by dynamically quantized int8 ones."""
    import torch

    torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def store_path(dataset: str, dtype: str, cfg: dict) -> str:
    key = hashlib.sha256(json.dumps({"dataset": dataset, **cfg}, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(OUT, "dtype_quality", f"{dataset}-{dtype}-{key}.npz")


def load_store(path: str) -> dict:
    """user -> (scores, labels) of its candidates, in the loader's row order."""
    if not os.path.isfile(path):
        return {}
    with np.load(path) as z:
        return {int(u): (s, l) for u, s, l in zip(z["users"], z["scores"], z["labels"])}


def save_store(path: str, done: dict, seconds: float) -> None:
    users = sorted(done)
    tmp = path + ".tmp.npz"
    np.savez(tmp, users=np.array(users), scores=np.stack([done[u][0] for u in users]),
             labels=np.stack([done[u][1] for u in users]), seconds=seconds)
    os.replace(tmp, path)


def score_dataset(dataset: str, dtype: str, cfg: dict) -> dict:
    """Score every sampled test user's candidates (resuming from the store); returns the store. The loader
    keeps a process's models, and int8 quantizes the kept float32 model in place: its run starts and ends
    with none kept, so no float32 run shares that model."""
    from recbole_lrgd.llm.loader import forget_loaded

    if dtype != QUANTIZED:
        return _score_dataset(dataset, dtype, cfg)
    forget_loaded()
    try:
        return _score_dataset(dataset, dtype, cfg)
    finally:
        forget_loaded()


def _score_dataset(dataset: str, dtype: str, cfg: dict) -> dict:
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_lrgd.config import build_config
    from recbole_lrgd.data.loaders import prepare_data
    from recbole_lrgd.model import LRGD

    path = store_path(dataset, dtype, cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    done = load_store(path)
    seconds = float(np.load(path)["seconds"]) if done else 0.0
    config = build_config("LRGD", dataset, config_dict=llm_settings(cfg))
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, _, test = prepare_data(config, data)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = LRGD(config, train._dataset)
    if dtype == QUANTIZED:
        quantize_linear(model.ranker.scorer.model)
    uid = test._dataset.uid_field
    for batch in test:
        interaction = batch[0]
        users = interaction[uid].numpy()
        if all(int(u) in done for u in users):
            continue
        start = time.time()
        scores = model.predict(interaction).detach().double().numpy()
        seconds += time.time() - start
        labels = interaction["label"].numpy()
        for user, rows in user_rows(users):
            done[user] = (scores[rows], labels[rows].astype(np.int8))
        save_store(path, done, seconds)
        print(f"{dataset} {dtype}: {len(done)} users, {seconds:.0f}s scoring", flush=True)
    return done


def target_ranks(done: dict) -> dict:
    """0-based rank of each user's target among its candidates, ties counted against it."""
    return {u: int((s[l <= 0] >= s[l > 0][0]).sum()) for u, (s, l) in done.items()}


def compare(dataset: str, stores: dict, seconds: dict, new: str, base: str) -> dict:
    """Dtype ``new`` against dtype ``base`` on the users both scored: score agreement and NDCG@10(new - base)."""
    from scipy.stats import spearmanr

    a_store, b_store = stores[base], stores[new]
    users = sorted(set(a_store) & set(b_store))
    for u in users:
        assert np.array_equal(a_store[u][1], b_store[u][1]), f"user {u}: different candidates"
    a = np.concatenate([a_store[u][0] for u in users])
    b = np.concatenate([b_store[u][0] for u in users])
    per_user = [spearmanr(a_store[u][0], b_store[u][0])[0] for u in users]
    ranks_a, ranks_b = target_ranks({u: a_store[u] for u in users}), target_ranks({u: b_store[u] for u in users})
    n_a, n_b = ndcg_at(ranks_a), ndcg_at(ranks_b)
    diff, lo, hi, _ = paired_bootstrap(n_b, n_a)
    return {"dataset": dataset, "new": new, "base": base, "users": len(users), "candidates": len(a),
            "spearman_pooled": float(spearmanr(a, b)[0]), "spearman_user_median": float(np.nanmedian(per_user)),
            "same_target_rank": float(np.mean([ranks_a[u] == ranks_b[u] for u in users])),
            "ndcg10_base": float(np.mean(list(n_a.values()))), "ndcg10_new": float(np.mean(list(n_b.values()))),
            "ndcg10_diff": diff, "ci_lo": lo, "ci_hi": hi, "excludes_0": bool(lo > 0 or hi < 0),
            "seconds_base": seconds[base], "seconds_new": seconds[new]}


def report(rows: list, command: str) -> str:
    lines = ["# bfloat16 and int8 vs float32: ranking quality", "", f"`{command}`", "",
             "Same users, candidates and prompts; default settings (random demonstrations, 2 demos); "
             "score cache off. int8 (this benchmark's own, not an llm_dtype): the float32 model with its "
             "linear layers (LM head included) dynamically quantized (int8 weights, int8 activations per call; "
             "CPU only). A row compares B with A "
             "(column comparison: B - A). Spearman: per-candidate scores, pooled over all users' candidates "
             "and the median of per-user correlations. Diff: NDCG@10(B) - NDCG@10(A), paired bootstrap 95% "
             "interval over users (10,000 resamples).", "",
             "| dataset | comparison | users | Spearman pooled | Spearman per-user median | same target rank | "
             "NDCG@10 A | NDCG@10 B | diff | 95% CI | CI excludes 0 | scoring s A / B |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {SHORT[r['new']]} - {SHORT[r['base']]} | {r['users']} | "
                     f"{r['spearman_pooled']:.4f} | {r['spearman_user_median']:.4f} | "
                     f"{r['same_target_rank']:.1%} | {r['ndcg10_base']:.4f} | {r['ndcg10_new']:.4f} | "
                     f"{r['ndcg10_diff']:+.4f} | [{r['ci_lo']:+.4f}, {r['ci_hi']:+.4f}] | "
                     f"{'yes' if r['excludes_0'] else 'no'} | {r['seconds_base']:.0f} / {r['seconds_new']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,amazon-beauty")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--data_path", default="../shared/data")
    args = parser.parse_args(argv)
    rows = []
    for dataset in args.datasets.split(","):
        stores, seconds = {}, {}
        for dtype in DTYPES:
            cfg = settings_for(dataset, dtype, args.users, args.data_path)
            stores[dtype] = score_dataset(dataset, dtype, cfg)
            seconds[dtype] = float(np.load(store_path(dataset, dtype, cfg))["seconds"])
        rows += [compare(dataset, stores, seconds, new, base) for new, base in PAIRS]
    write_summary("dtype_quality", args, rows, report)
    return 0


def write_summary(script: str, args: argparse.Namespace, rows: list, render) -> None:
    """Each row as a JSON line, then ``render(rows, command)``: printed and written to OUT/<script>.md."""
    for row in rows:
        print(json.dumps(row), flush=True)
    command = f"OMP_NUM_THREADS=1 python benchmarks/{script}.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items())
    text = render(rows, command)
    with open(os.path.join(OUT, f"{script}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    run_script(main)

"""Does Effect_D on probe (training) users predict NDCG@10 on test users?

For --sets random global demonstration sets: Effect_D of each set on probe users (their last
training item as target) and NDCG@10 of LRGD with that set on test users, both with the same LLM.
Writes a CSV and a scatter plot and prints the Spearman correlation with its p-value.

    python benchmarks/effect_vs_ndcg.py --dataset=ml-100k --sets=30
    python benchmarks/effect_vs_ndcg.py --dataset=amazon-beauty --data_path=../shared/data --sets=30
"""
import argparse
import csv
import os
import sys
import time

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole.data import create_dataset  # noqa: E402
from recbole.utils import init_logger, init_seed  # noqa: E402

from recbole_lrgd.config import build_config  # noqa: E402
from recbole_lrgd.data.demonstrations import DemoChoice  # noqa: E402
from recbole_lrgd.data.loaders import prepare_data  # noqa: E402
from recbole_lrgd.data.probes import make_probes  # noqa: E402
from recbole_lrgd.model import LRGD  # noqa: E402
from recbole_lrgd.optimizer.probe_effect import ProbeEffect  # noqa: E402
from recbole_lrgd.trainer import LRGDTrainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default="../shared/data")
    parser.add_argument("--sets", type=int, default=30)
    parser.add_argument("--num_demos", type=int, default=2)
    parser.add_argument("--probe_users", type=int, default=16)
    parser.add_argument("--eval_users", type=int, default=24)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args()

    config = build_config("LRGD", args.dataset, config_dict={
        "data_path": args.data_path, "eval_users": args.eval_users, "num_demos": args.num_demos,
        "demo_mode": "random", "show_progress": False, "seed": args.seed, "state": "WARNING"})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    train, _, test = prepare_data(config, create_dataset(config))
    model = LRGD(config, train._dataset)
    trainer = LRGDTrainer(config, model)
    trainer.fit(train, verbose=False)
    probes = make_probes(model.ranker.pool, args.probe_users, 19, train._dataset.item_num, args.seed,
                         max_his_len=model.ranker.settings.max_his_len)
    probe_effect = ProbeEffect(model.ranker, probes, config["effect_temperature"])  # zero-shot scored once

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"effect_vs_ndcg_{args.dataset}")
    rows = []
    for s in range(args.sets):
        start = time.time()
        demo_users = model.ranker.pool.random_users(args.num_demos, args.seed + 1 + s)
        choice = DemoChoice.chosen([(u, 0) for u in demo_users], per_user=False)
        effects = probe_effect.of(choice)
        model.use_demonstrations(choice)
        init_seed(config["seed"], config["reproducibility"])
        ndcg = trainer.evaluate(test, show_progress=False)["ndcg@10"]
        rows.append({"set": s, "demo_users": " ".join(map(str, demo_users)), "effect_d": float(effects.mean()),
                     "effect_pos": float((effects > 0).mean()), "test_ndcg10": float(ndcg)})
        print(f"set {s:2d}  users {demo_users}  EffectD {effects.mean():+.4f}  NDCG@10 {ndcg:.4f}  "
              f"({time.time() - start:.0f}s)", flush=True)
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    effect = np.array([r["effect_d"] for r in rows])
    ndcg = np.array([r["test_ndcg10"] for r in rows])
    rho, p = spearmanr(effect, ndcg)
    print(f"{args.dataset}: Spearman rho(EffectD on {len(probes)} probe users, NDCG@10 on {len(test.uid_list)} "
          f"test users) = {rho:.3f}, p = {p:.3g}, n = {len(rows)} sets")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(effect, ndcg)
    ax.set_xlabel(f"Effect_D on {len(probes)} probe users")
    ax.set_ylabel(f"NDCG@10 on {len(test.uid_list)} test users")
    ax.set_title(f"{args.dataset}: Spearman {rho:.2f} (p={p:.2g}), {len(rows)} sets")
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    print(f"wrote {stem}.csv and {stem}.png")


if __name__ == "__main__":
    main()

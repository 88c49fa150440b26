"""How fast is each way of scoring? Candidates scored per second on the default LLM, real ml-100k prompts.

Five ways, each on the same test users (uni19: 20 candidates each), with the score cache OFF:
  generate          the LLM writes a ranked list of the numbered candidates (greedy, max_new_tokens)
  naive likelihood  the full prompt + one candidate per forward pass (llm/scorer.py: naive_likelihood)
  per-user cache    LLMScorer.score one user at a time: the prefix forward, then the user's suffix with its
                    candidates packed on its KV cache; no prefix shared across users (the prefix cache is
                    cleared before every user)
  shared prefix + batching
                    instruction + demonstrations (one global set) encoded once for all users, and the
                    users' suffixes with their packed candidates batched, user_batch_size (8) users per
                    forward pass on a copy of the prefix's KV cache (LLMScorer.score_many)
  verbalizer        candidates labelled A..T, one forward pass, label logits
Prompts are built before timing (the same for every way of a mode). Printed: candidates/s as ratios to
generate and to naive likelihood; the FLOP/s achieved, 2 * non-embedding parameters * tokens run
through the model / seconds (tokens = input ids of every forward call, so KV-cached tokens count once;
attention over the cache and the tied LM head are left out, so this is a lower bound); the machine's
float32 matmul FLOP/s measured in the same run; and the peak RSS.

    python benchmarks/scoring_speed.py [--users 8] [--max_new_tokens 100] [--threads N]
"""
import argparse
import os
import resource
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole.data import create_dataset  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_lrgd.llm.prompt import Prompt, encode_prompt  # noqa: E402
from recbole_lrgd.llm.scorer import naive_likelihood  # noqa: E402
from recbole_lrgd.model import LRGD  # noqa: E402
from recbole_lrgd.quick_start import build_config, prepare_data  # noqa: E402

MATMUL_N = 1024


def eval_users_of(test_loader) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """(user, history, candidates) of each test user, read from RecBole's eval batches as predict does."""
    out = []
    for batch in test_loader:
        inter = batch[0]
        users = inter["user_id"].numpy()
        seqs, lens, items = inter["item_id_list"].numpy(), inter["item_length"].numpy(), inter["item_id"].numpy()
        for user in dict.fromkeys(users.tolist()):
            rows = np.flatnonzero(users == user)
            out.append((user, seqs[rows[0], : lens[rows[0]]], items[rows]))
    return out


def non_embedding_params(model) -> int:
    """Parameters minus the input embedding and an untied LM head (Kaplan et al.'s N)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return total - embed.numel() - (0 if head is embed else head.numel())


def matmul_flops(n: int = MATMUL_N, reps: int = 10, tries: int = 3) -> float:
    """Best float32 FLOP/s of an n^3 torch.matmul on this machine, now (2 n^3 FLOPs per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = 0.0
    for _ in range(tries):
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
    return best


class TokenCounter:
    """Counts the input ids of every forward call of a model (generate's steps included)."""

    def __init__(self, model):
        self.tokens = 0
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(ids.numel()) if ids is not None else 0

    def close(self) -> None:
        self._hook.remove()


def timed(model, fn: Callable[[], None]) -> Tuple[float, int]:
    counter = TokenCounter(model)
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start, counter.tokens
    finally:
        counter.close()


def mode_model(config, train_ds, base: LRGD, mode: str) -> LRGD:
    """An LRGD of ``mode`` sharing ``base``'s demonstrations (the scorer is built from the config)."""
    config["scorer_mode"] = mode
    model = LRGD(config, train_ds)
    model.pool, model.global_demo_users = base.pool, base.global_demo_users
    model.scorer  # noqa: B018 - built now: the config object is shared and its mode changes next
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--num_demos", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads; 0 = torch's default. On a machine shared with other jobs use 1: "
                             "a busy core stalls every multi-threaded op (measured 9.5 s vs 1.0 s per forward)")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line: these are not its keys
    if args.threads:
        torch.set_num_threads(args.threads)

    config = build_config("LRGD", "ml-100k", config_dict={
        "eval_users": args.users, "num_demos": args.num_demos, "demo_mode": "random", "score_cache": False,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed, "show_progress": False, "state": "WARNING",
        "use_gpu": False})
    init_seed(config["seed"], config["reproducibility"])
    train, _, test = prepare_data(config, create_dataset(config))
    base = LRGD(config, train._dataset)
    base.prepare_demonstrations(train._dataset)
    users = eval_users_of(test)
    models = {mode: mode_model(config, train._dataset, base, mode) for mode in ("likelihood", "verbalizer", "generate")}
    prompts: Dict[str, List[Prompt]] = {mode: [m.user_prompt(u, h, c) for u, h, c in users]
                                        for mode, m in models.items()}
    llm, tok = models["likelihood"].scorer.model, models["likelihood"].scorer.tokenizer
    n_cands = sum(len(c) for _, _, c in users)

    def naive():
        scorer = models["likelihood"].scorer
        for p in prompts["likelihood"]:
            naive_likelihood(llm, encode_prompt(tok, p), [scorer.candidate_ids(c) for c in p.candidates])

    def per_user():
        scorer = models["likelihood"].scorer
        for p in prompts["likelihood"]:
            scorer._prefixes.clear()  # no prefix shared across users
            scorer.score(p)

    def shared(mode: str):
        def fn():
            scorer = models[mode].scorer
            scorer._prefixes.clear()  # the first user pays for the shared prefix, as in a run
            for p in prompts[mode]:
                scorer.score(p)
        return fn

    def batched():
        scorer = models["likelihood"].scorer
        scorer._prefixes.clear()  # the first batch pays for the shared prefix, as in a run
        scorer.score_many(prompts["likelihood"])

    ways = [("generate", shared("generate")), ("naive likelihood", naive), ("per-user cache", per_user),
            ("shared prefix + batching", batched), ("verbalizer", shared("verbalizer"))]
    with torch.inference_mode():
        results = {name: timed(llm, fn) for name, fn in ways}
    peak = matmul_flops()
    n_params = non_embedding_params(llm)

    speed = {name: n_cands / secs for name, (secs, _) in results.items()}
    prompt_tokens = np.mean([len(encode_prompt(tok, p)) for p in prompts["likelihood"]])
    counts = models["generate"].scorer.counts
    print(f"default LLM, ml-100k, {len(users)} users x {n_cands // len(users)} candidates, "
          f"{args.num_demos} random demonstrations, likelihood prompt {prompt_tokens:.0f} tokens on average, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU")
    print(f"{'way':<25}{'seconds':>9}{'cand/s':>9}{'x generate':>12}{'x naive':>9}{'tokens':>9}"
          f"{'GFLOP/s':>9}{'% matmul':>10}")
    for name, (secs, tokens) in results.items():
        flops = 2 * n_params * tokens / secs
        print(f"{name:<25}{secs:>9.1f}{speed[name]:>9.2f}{speed[name] / speed['generate']:>12.2f}"
              f"{speed[name] / speed['naive likelihood']:>9.2f}{tokens:>9d}{flops / 1e9:>9.2f}"
              f"{100 * flops / peak:>9.1f}%")
    print(f"FLOP/s achieved = 2 * N * tokens / seconds, N = {n_params / 1e6:.1f}M non-embedding parameters; "
          f"tokens = input ids of every forward call")
    print(f"machine: float32 torch.matmul {MATMUL_N}^3, best of 3 x 10: {peak / 1e9:.2f} GFLOP/s")
    print(f"generate: {counts.parse_failure_rate:.0%} of outputs named no candidate, "
          f"{counts.unparsed_rate:.0%} of candidates never named (max_new_tokens {args.max_new_tokens})")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss_mb:.0f} MB ({'under' if rss_mb < 2048 else 'OVER'} the 2 GB target)")


if __name__ == "__main__":
    main()

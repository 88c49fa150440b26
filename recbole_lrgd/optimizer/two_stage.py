"""Two-stage demonstration optimization, LRGD's ``fit`` (docs/theory.md).

Stage 1 (selection): a seeded pool of training users' demonstrations, each scored alone by its
regularised robust Effect on probe users (training users whose last training item is the target);
K chosen greedily under the redundancy penalty and the token budget.
Stage 2 (refinement): coordinate search over the set (swap a demonstration for a pool one, or
shorten its history), accepting a move only when the objective improves; stops after
``stage2_patience`` rejected moves; a collapse guard reverts to the best set seen whenever Effect
falls below zero. With ``fallback_zero_shot``, a final set whose Effect is still below zero (every
set seen hurts the probes) gives way to no demonstrations: zero-shot, whose Effect is 0 by definition.

Everything is seen through training interactions only. A set is a list of ``(user, cut)``: the
demonstration of pool user ``user`` with its ``cut`` oldest shown history items removed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from logging import getLogger
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from recbole_lrgd.data.demonstrations import DemoChoice, Spec
from recbole_lrgd.data.probes import Probe, make_probes
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.evaluator.effect import ProbeEffect
from recbole_lrgd.optimizer.objective import Evaluation, combine, copy_bias, drift, redundancy
from recbole_lrgd.optimizer.perturb import perturb_demonstrations
from recbole_lrgd.digest import digest
from recbole_lrgd.optimizer.state import data_fingerprint, load_state, save_state

SCOPES = ("global", "per_user")
YAML_KEYS = {"scope": "lrgd_scope", "token_budget": "demo_token_budget"}  # field -> YAML key, where they differ
NOT_IN_IDENTITY = ("warm_start", "fallback_zero_shot")  # how a saved state is used, not what its scores are


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer's keys of ``properties/model/LRGD.yaml`` (and RecBole's ``seed``), which holds their defaults."""

    num_demos: int
    scope: str
    library_size: int
    pool_size: int
    probe_users: int
    probe_negatives: int
    perturb_num: int
    perturb_rate: float
    lambda_std: float
    lambda_redundancy: float
    lambda_copy: float
    lambda_reg: float
    token_budget: Optional[int]  # ~: no budget
    stage2_steps: int
    stage2_patience: int
    stage2_candidates: int
    seed: int
    effect_temperature: Union[float, str]
    warm_start: bool
    fallback_zero_shot: bool

    @classmethod
    def from_config(cls, config) -> "OptimizerSettings":
        """Settings from a RecBole config (or any mapping); a key it lacks is an ``LRGDError``."""
        values = {}
        for spec in fields(cls):
            key = YAML_KEYS.get(spec.name, spec.name)
            if key not in config:
                raise LRGDError(f"the config has no {key!r}: properties/model/LRGD.yaml sets every optimizer key")
            values[spec.name] = float(config[key]) if spec.type in ("float", float) else config[key]
        return cls(**values)

    @property
    def set_size(self) -> int:
        """Demonstrations the optimizer chooses: the set (global) or the library users retrieve from."""
        return self.num_demos if self.scope == "global" else max(self.num_demos, self.library_size)

    @property
    def lambdas(self) -> Dict[str, float]:
        return {"std": self.lambda_std, "redundancy": self.lambda_redundancy, "copy": self.lambda_copy,
                "reg": self.lambda_reg}

    def identity(self) -> Dict[str, Any]:
        """The settings that decide the optimizer's scores and choices."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_IN_IDENTITY}


def set_key(specs: Sequence[Spec]) -> str:
    """A demonstration set as a memo key."""
    return ";".join(f"{u}:{c}" for u, c in specs)


class DemoOptimizer:
    """Chooses LRGD's demonstrations by the regularised probe objective; see the module docstring.

    ``ranker`` is the ``ICLRanker`` that scores test users (its pool, prompts and scorer); ``context``
    is what else decides a score (``state.score_context``: the model's identity, the prompt keys),
    hashed with the settings into the state's identity; ``map_fn(fn, items)`` runs ``fn`` over items
    (a distributed map shards it over processes); ``is_main`` says whether this process writes the state.
    """

    def __init__(self, ranker, settings: OptimizerSettings, state_path: Optional[str] = None,
                 context: Optional[Dict[str, Any]] = None, show_progress: bool = False,
                 map_fn: Optional[Callable[[Callable, Sequence], List]] = None, is_main: bool = True,
                 round_size: int = 1):
        if settings.scope not in SCOPES:
            raise LRGDError(f"lrgd_scope {settings.scope!r}: use one of {', '.join(SCOPES)}")
        self.ranker, self.settings, self.state_path = ranker, settings, state_path
        self.show_progress, self.is_main = show_progress, is_main
        self.map_fn = map_fn or (lambda fn, items: [fn(i) for i in items])
        self.round_size = max(1, int(round_size))  # pool demonstrations scored between saves (the process count)
        self.context = json.loads(json.dumps(context or {}, sort_keys=True, default=str))
        self.identity = digest({"settings": settings.identity(), "context": self.context})
        self.logger = getLogger()
        self._memo: Dict[str, Evaluation] = {}

    # -- data ----------------------------------------------------------------------------------
    def setup(self, item_num: int) -> None:
        """Probe users and pool users, disjoint, seeded, from the ranker's pool; negatives from training
        items only."""
        s = self.settings
        self.pool = pool = self.ranker.pool
        self.items = np.unique(np.concatenate([pool.sequences[int(u)] for u in pool.users]))
        self.probes: List[Probe] = make_probes(pool, s.probe_users, s.probe_negatives, item_num, s.seed,
                                               max_his_len=self.ranker.max_his_len, items=self.items)
        probe_users = {p.user for p in self.probes}
        rest = np.array([u for u in pool.users if int(u) not in probe_users], dtype=np.int64)
        rng = np.random.default_rng([s.seed, 11])
        self.pool_users = sorted(int(u) for u in rng.choice(rest, size=min(s.pool_size, len(rest)), replace=False))
        self.effect = ProbeEffect(self.ranker, self.probes, s.effect_temperature,
                                  extra_items=[pool.demonstration(u)[1] for u in self.pool_users])

    @cached_property
    def data_id(self) -> str:
        """The training data the fit sees, part of its state's key (an optimizer serves one ranker's data)."""
        return data_fingerprint(self.ranker.pool.sequences, self.ranker.titles)

    def item_set(self, spec: Spec) -> Tuple[int, ...]:
        """A demonstration's items, history and target (what the redundancy penalty compares)."""
        history, target = self.pool.demonstration(*spec)
        return history + (target,)

    def demo_tokens(self, specs: Sequence[Spec]) -> int:
        """Most tokens the demonstrations of one prompt take: the whole set (global scope), or the
        ``num_demos`` longest of the library (per-user scope: a prompt shows only that many)."""
        tokens = sorted((self.ranker.demonstration_tokens(self.pool.demonstration(*s)) for s in specs), reverse=True)
        return sum(tokens if self.settings.scope == "global" else tokens[: self.settings.num_demos])

    def fits_budget(self, specs: Sequence[Spec]) -> bool:
        budget = self.settings.token_budget
        return budget is None or self.demo_tokens(specs) <= budget

    # -- scoring ---------------------------------------------------------------------------------
    def evaluate(self, specs: Sequence[Spec]) -> Evaluation:
        """The regularised objective of a set on the probes (memoised). The clean set's and its perturbed
        copies' prompts are scored in one call; the clean prompts also list the demonstrations' own
        targets as extra candidates, to measure the copy bias."""
        key = set_key(specs)
        if key in self._memo:
            return self._memo[key]
        s = self.settings
        if not specs:  # zero-shot (``fallback_zero_shot``): nothing moves, by definition
            return combine([0.0] * (s.perturb_num + 1), 0.0, 0.0, 0.0, s.lambdas)
        choice = DemoChoice.chosen(specs, per_user=s.scope == "per_user")
        rows, extras = [], []
        for version in range(s.perturb_num + 1):
            for probe in self.probes:
                chosen = self.effect.seen_by(probe, choice)
                demos = [self.pool.demonstration(*spec) for spec in chosen]
                if version:  # a global set's copies are shared by all probes (one cached prefix each)
                    salt = probe.user if s.scope == "per_user" else 0
                    demos = perturb_demonstrations(demos, s.perturb_rate, self.items,
                                                   [s.seed, 13, version, salt, *np.ravel(chosen)])
                candidates = [int(i) for i in probe.candidates]
                if not version:
                    candidates += list(dict.fromkeys(t for _, t in demos if t not in candidates))
                    extras.append(len(candidates) - len(probe.candidates))
                rows.append((probe, demos, candidates))
        scores = self.effect.score(rows)
        n = len(self.probes)
        zero = self.effect.zero_shot([c for _, _, c in rows[:n]])
        effects = [float(self.effect.per_probe(scores[v * n:(v + 1) * n], zero).mean())
                   for v in range(s.perturb_num + 1)]
        temperature = self.effect.temperature
        evaluation = combine(
            effects, redundancy([self.item_set(sp) for sp in specs]), copy_bias(scores[:n], zero, extras, temperature),
            drift(self.effect.own_columns(scores[:n]), self.effect.own_columns(zero), temperature), s.lambdas)
        self._memo[key] = evaluation
        return evaluation

    # -- state -----------------------------------------------------------------------------------
    def _fresh_state(self) -> Dict[str, Any]:
        return {"identity": self.identity, "identity_context": self.context, "data": self.data_id,
                "settings": asdict(self.settings), "probe_users": [p.user for p in self.probes],
                "pool_users": self.pool_users,
                "pool_scores": {}, "stage1": None, "stage2": None, "history": [], "warm_start_from": None,
                "warm_start_pool_scores": {}}

    def _save(self, state: Dict[str, Any]) -> None:
        if self.is_main:
            state["zero_shot"] = self.effect.kept_zero_shot()  # the probes' zero-shot scores: a resume skips them
            save_state(self.state_path, state)

    def initial_state(self) -> Dict[str, Any]:
        """Resume a matching state; warm-start from one on other data; else start afresh.

        A warm start keeps the saved stage-1 (pool) scores of the users still in the data, in
        ``warm_start_pool_scores``: stage 2 ranks its swaps by them. They were measured on the old
        data, so they only order the swaps; every set is evaluated afresh.
        """
        saved = load_state(self.state_path, set_aside=self.is_main)
        if self._matches(saved):
            self.logger.info(f"demonstration optimizer: resuming from {self.state_path}")
            self._remember(saved)
            self.effect.restore_zero_shot(saved.get("zero_shot"))
            return saved
        state = self._fresh_state()
        if saved and saved.get("identity") == self.identity and self.settings.warm_start and saved.get("chosen"):
            users = set(int(u) for u in self.pool.users)
            start = [tuple(s) for s in saved["chosen"] if int(s[0]) in users]
            if start:
                state["warm_start_from"] = [list(s) for s in start]
                pool_scores = saved["pool_scores"] or saved.get("warm_start_pool_scores") or {}
                state["warm_start_pool_scores"] = {u: v for u, v in pool_scores.items() if int(u) in users}
                self.logger.info(f"demonstration optimizer: warm start from the saved set {start} (new data)")
        return state

    def _matches(self, saved: Optional[Dict[str, Any]]) -> bool:
        """Whether a saved state is this fit's: the same identity and data."""
        return bool(saved) and saved.get("identity") == self.identity and saved.get("data") == self.data_id

    def finished(self, stages: int) -> Optional[Dict[str, Any]]:
        """The saved state when it is this fit's and has finished ``stages``; else None. Reading it needs no lock
        (states are replaced whole) and changes nothing."""
        saved = load_state(self.state_path, set_aside=False)
        if not self._matches(saved) or not saved.get("stage1"):
            return None
        if stages >= 2 and not (saved.get("stage2") or {}).get("done"):
            return None
        saved["chosen"] = self._chosen(saved, stages)
        return saved

    def _chosen(self, state: Dict[str, Any], stages: int) -> List[List[int]]:
        """The set a fit of ``stages`` ends with: stage 2's current set, or stage 1's; none (zero-shot) when
        ``fallback_zero_shot`` and that set's Effect on the probes, as the state recorded it, is below zero."""
        chosen = state["stage2"]["current"] if stages >= 2 else state["stage1"]["set"]
        if not self.settings.fallback_zero_shot:
            return chosen
        effect = next(h["effect"] for h in [*state["history"], state["stage1"]] if h["set"] == chosen)
        return [] if effect < 0 else chosen

    def _remember(self, state: Dict[str, Any]) -> None:
        """Seed the memo with the evaluations a saved state holds, so a resumed fit rescores nothing."""
        entries = [({"set": [[int(u), 0]], **v}) for u, v in state["pool_scores"].items()]
        for entry in entries + list(state["history"]) + ([state["stage1"]] if state["stage1"] else []):
            self._memorize(entry["set"], entry)

    def _memorize(self, specs: Sequence[Sequence[int]], values: Dict[str, Any]) -> None:
        """Keep an evaluation given as a dict (a state's entry, or another process's result)."""
        kept = {k: v for k, v in values.items() if k in Evaluation.__dataclass_fields__}
        kept["effects"] = tuple(kept.get("effects", ()))
        self._memo[set_key([tuple(x) for x in specs])] = Evaluation(**kept)

    # -- the two stages --------------------------------------------------------------------------
    def run(self, item_num: int, stages: int) -> Dict[str, Any]:
        """Both stages (or stage 1 alone); returns the state, whose ``chosen`` is the final set."""
        begun = time.time()  # stage 1's time includes the probes' zero-shot scores
        self.setup(item_num)
        state = self.initial_state()
        if state["warm_start_from"] and not state["stage1"]:
            start = [tuple(s) for s in state["warm_start_from"]]
            state["stage1"] = {"set": [list(s) for s in start], **self.evaluate(start).to_dict()}
            self._record(state, "warm start", start)
        if not state["stage1"]:
            self._clock(state, "stage1", begun)
            self.stage1(state)
        if stages >= 2:
            self.stage2(state)
        state["chosen"] = [list(s) for s in self._chosen(state, stages)]
        self._save(state)
        return state

    def _clock(self, state: Dict[str, Any], stage: str, since: float, processes: int = 1) -> None:
        """Add the seconds since ``since`` to ``state["seconds"][stage]`` (wall) and to ``<stage>_process``: what
        one process would have spent (wall x the processes that shared the work; work every process repeats
        counts once). Clocked step by step and saved with the step, so a resumed fit's time counts every run."""
        timing, wall = state.setdefault("seconds", {}), time.time() - since
        timing[stage] = timing.get(stage, 0.0) + wall
        timing[f"{stage}_process"] = timing.get(f"{stage}_process", 0.0) + wall * processes

    def _record(self, state: Dict[str, Any], event: str, specs: Sequence[Spec]) -> None:
        state["history"].append({"event": event, "set": [list(s) for s in specs], **self.evaluate(specs).to_dict()})

    def stage1(self, state: Dict[str, Any]) -> None:
        """Score each pool demonstration alone (sharded by ``map_fn``), then choose greedily."""
        todo = [u for u in self.pool_users if str(u) not in state["pool_scores"]]
        bar = tqdm(total=len(self.pool_users), initial=len(self.pool_users) - len(todo), ncols=100,
                   desc="LRGD stage 1 (pool)", unit="demo", disable=not self.show_progress)
        chunk = self.round_size  # one demonstration per process, then the state is saved: a fit resumes
        for start in range(0, len(todo), chunk):
            begun, part = time.time(), todo[start: start + chunk]
            for user, evaluation in zip(part, self.map_fn(lambda u: self.evaluate([(u, 0)]).to_dict(), part)):
                state["pool_scores"][str(user)] = evaluation
                self._memorize([(user, 0)], evaluation)  # scored by another process, maybe
            self._clock(state, "stage1", begun, processes=len(part))
            state["seconds"]["stage1_demos"] = state["seconds"].get("stage1_demos", 0) + len(part)
            self._save(state)
            bar.update(len(part))
        bar.close()
        begun = time.time()
        chosen = self.greedy({int(u): v["objective"] for u, v in state["pool_scores"].items()})
        state["stage1"] = {"set": [list(s) for s in chosen], **self.evaluate(chosen).to_dict()}
        self._record(state, "stage 1", chosen)
        self._clock(state, "stage1", begun)
        self._save(state)

    def greedy(self, single: Dict[int, float]) -> List[Spec]:
        """K demonstrations by single-demonstration objective minus redundancy with those chosen,
        within the token budget (ties: lower user id)."""
        chosen: List[Spec] = []
        left = sorted(single, key=lambda u: (-single[u], u))
        while len(chosen) < self.settings.set_size and left:
            def gain(u: int) -> float:
                mine = self.item_set((u, 0))
                overlap = max((redundancy([mine, self.item_set(s)]) for s in chosen), default=0.0)
                return single[u] - self.settings.lambda_redundancy * overlap

            fitting = [u for u in left if self.fits_budget(chosen + [(u, 0)])]
            if not fitting:
                break
            best = max(fitting, key=lambda u: (gain(u), -u))
            chosen.append((best, 0))
            left.remove(best)
        return chosen

    def _move(self, current: List[Spec], step: int, ranked: List[int]) -> Optional[List[Spec]]:
        """A seeded coordinate move: swap one demonstration for a top pool one, or shorten its history."""
        rng = np.random.default_rng([self.settings.seed, 17, step])
        if not current:
            return None
        i = int(rng.integers(len(current)))
        used = {u for u, _ in current}
        options = [u for u in ranked[: self.settings.stage2_candidates] if u not in used]
        history = self.pool.demonstration(current[i][0])[0]
        can_cut = current[i][1] + 1 < len(history)
        if options and (not can_cut or rng.random() < 0.7):
            proposal = current[:i] + [(int(options[int(rng.integers(len(options)))]), 0)] + current[i + 1:]
        elif can_cut:
            proposal = current[:i] + [(current[i][0], current[i][1] + 1)] + current[i + 1:]
        else:
            return None
        return proposal if self.fits_budget(proposal) else None

    def stage2(self, state: Dict[str, Any]) -> None:
        """Coordinate search with accept-if-better, early stop and the collapse guard."""
        s = self.settings
        if state["stage2"] and state["stage2"]["done"]:
            return
        st = state["stage2"] or {"step": 0, "rejected": 0, "current": state["stage1"]["set"],
                                 "best_safe": state["stage1"]["set"] if state["stage1"]["effect"] >= 0 else None,
                                 "done": False}
        state["stage2"] = st
        pool_scores = state["pool_scores"] or state.get("warm_start_pool_scores") or {}
        ranked = sorted((int(u) for u in pool_scores), key=lambda u: (-pool_scores[str(u)]["objective"], u))
        bar = tqdm(total=s.stage2_steps, initial=st["step"], ncols=100, desc="LRGD stage 2 (search)",
                   unit="move", disable=not self.show_progress)
        while not st["done"] and st["step"] < s.stage2_steps and st["rejected"] < s.stage2_patience:
            begun, current = time.time(), [tuple(x) for x in st["current"]]
            proposal = self._move(current, st["step"], ranked)
            st["step"] += 1
            bar.update(1)
            if proposal is None or self.evaluate(proposal).objective <= self.evaluate(current).objective:
                st["rejected"] += 1
            else:
                st["rejected"] = 0
                st["current"] = [list(x) for x in proposal]
                self._record(state, "accept", proposal)
                self._guard(state)
            self._clock(state, "stage2", begun)
            self._save(state)
        bar.close()
        self._guard(state)
        st["done"] = True

    def _guard(self, state: Dict[str, Any]) -> None:
        """Track the best non-collapsed set; revert to it when the current set's Effect is below zero."""
        st = state["stage2"]
        current = [tuple(x) for x in st["current"]]
        evaluation = self.evaluate(current)
        if evaluation.effect >= 0:
            best = st["best_safe"]
            if best is None or evaluation.objective > self.evaluate([tuple(x) for x in best]).objective:
                st["best_safe"] = [list(x) for x in current]
        elif st["best_safe"] is not None:
            st["current"] = [list(x) for x in st["best_safe"]]
            self._record(state, "collapse guard: revert", [tuple(x) for x in st["best_safe"]])

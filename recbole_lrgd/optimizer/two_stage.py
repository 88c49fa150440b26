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

import dataclasses
import time
from functools import cached_property
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from recbole_lrgd.data.demonstrations import DemoChoice, Spec
from recbole_lrgd.data.probes import Probe, make_probes
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.optimizer.objective import Evaluation, combine, copy_bias, drift, redundancy
from recbole_lrgd.optimizer.perturb import perturb_demonstrations
from recbole_lrgd.optimizer.probe_effect import ProbeEffect
from recbole_lrgd.optimizer.progress import StateFile
from recbole_lrgd.settings import SCOPES, OptimizerSettings
from recbole_lrgd.optimizer.state import (OptimizerState, ScoredSet, Stage2Search, data_fingerprint, plain_context,
                                          save_state, state_identity)

def set_key(specs: Sequence[Spec]) -> str:
    """A demonstration set as a memo key."""
    return ";".join(f"{u}:{c}" for u, c in specs)


class DemoOptimizer:
    """Chooses LRGD's demonstrations by the regularised probe objective; see the module docstring.

    ``ranker`` is the ``ICLRanker`` that scores test users (its pool, prompts and scorer); ``item_num`` the
    dataset's items (probe negatives are drawn from training items below it); ``context``
    is what else decides a score (``state.score_context``: the model's identity, the prompt keys),
    hashed with the settings into the state's identity (``state.state_identity``); ``state_path`` is where
    the state is kept (``progress.StateFile``); ``map_fn(fn, items)`` runs ``fn`` over items (a distributed
    map shards it over processes); ``is_main`` says whether this process writes the state.
    """

    def __init__(self, ranker, settings: OptimizerSettings, item_num: int, state_path: Optional[str] = None,
                 context: Optional[Dict[str, Any]] = None, show_progress: bool = False,
                 map_fn: Optional[Callable[[Callable, Sequence], List]] = None, is_main: bool = True,
                 round_size: int = 1):
        if settings.scope not in SCOPES:
            raise LRGDError(f"lrgd_scope {settings.scope!r}: use one of {', '.join(SCOPES)}")
        self.ranker, self.settings, self.state_path = ranker, settings, state_path
        self.show_progress, self.is_main = show_progress, is_main
        self.map_fn = map_fn or (lambda fn, items: [fn(i) for i in items])
        self.round_size = max(1, int(round_size))  # pool demonstrations scored between saves (the process count)
        self.context = plain_context(context)
        self.identity = state_identity(settings.identity(), self.context)
        self._memo: Dict[str, Evaluation] = {}
        # the data: probe users and pool users, disjoint, seeded, from the ranker's pool; negatives from training
        # items only (nothing is scored until a fit runs)
        s = settings
        self.pool = pool = ranker.pool
        self.items = np.unique(np.concatenate([pool.sequences[int(u)] for u in pool.users]))
        self.probes: List[Probe] = make_probes(pool, s.probe_users, s.probe_negatives, item_num, s.seed,
                                               max_his_len=self.ranker.settings.max_his_len, items=self.items)
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
        policy = self.ranker.policy(choice)
        rows, extras = [], []
        for version in range(s.perturb_num + 1):
            for probe in self.probes:
                chosen = policy.specs(probe.user, probe.history, probe=True)
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
    def _state_file(self) -> StateFile:
        """This fit's state file (read when used: ``state_path`` names it)."""
        return StateFile(self.state_path, self.identity, self.data_id, self.is_main)

    def _fresh_state(self) -> OptimizerState:
        return OptimizerState(identity=self.identity, identity_context=self.context, data=self.data_id,
                              settings=self.settings.flat(), probe_users=[p.user for p in self.probes],
                              pool_users=self.pool_users)

    def _save(self, state: OptimizerState) -> None:
        if self.is_main:
            state.zero_shot = self.effect.kept_zero_shot()  # the probes' zero-shot scores: a resume skips them
            save_state(self.state_path, state)

    def initial_state(self) -> OptimizerState:
        """Resume a matching state (its evaluations and the probes' zero-shot scores are kept, so nothing is
        scored again); warm-start from one on other data; else start afresh (``StateFile.begin``)."""
        users = {int(u) for u in self.pool.users}
        state, resumed = self._state_file().begin(self._fresh_state(), users, self.settings.warm_start)
        if resumed:
            self._remember(state)
            self.effect.restore_zero_shot(state.zero_shot)
        return state

    def finished(self, stages: int) -> Optional[OptimizerState]:
        """The saved state when it is this fit's and has finished ``stages``, its ``chosen`` the set that fit ends
        with; else None. Reading it needs no lock (states are replaced whole) and changes nothing."""
        saved = self._state_file().finished(stages)
        return None if saved is None else dataclasses.replace(saved, chosen=self._chosen(saved, stages))

    def _chosen(self, state: OptimizerState, stages: int) -> List[Spec]:
        """The set a fit of ``stages`` ends with: stage 2's current set, or stage 1's; none (zero-shot) when
        ``fallback_zero_shot`` and that set's Effect on the probes, as the state recorded it, is below zero."""
        chosen = state.stage2.current if stages >= 2 else state.stage1.specs
        if not self.settings.fallback_zero_shot:
            return chosen
        effect = next(h.evaluation.effect for h in [*state.history, state.stage1] if h.specs == chosen)
        return [] if effect < 0 else chosen

    def _remember(self, state: OptimizerState) -> None:
        """Seed the memo with the evaluations a saved state holds, so a resumed fit rescores nothing."""
        entries = [ScoredSet([(u, 0)], e) for u, e in state.pool_scores.items()]
        for entry in entries + state.history + ([state.stage1] if state.stage1 else []):
            self._memo[set_key(entry.specs)] = entry.evaluation

    # -- the two stages --------------------------------------------------------------------------
    def run(self, stages: int) -> OptimizerState:
        """Both stages (or stage 1 alone); returns the state, whose ``chosen`` is the final set."""
        begun = time.time()  # stage 1's time includes the probes' zero-shot scores
        state = self.initial_state()
        if state.warm_start_from and not state.stage1:
            start = state.warm_start_from
            state.stage1 = ScoredSet(list(start), self.evaluate(start))
            self._record(state, "warm start", start)
        if not state.stage1:
            state.add_seconds("stage1", time.time() - begun)
            self.stage1(state)
        if stages >= 2:
            self.stage2(state)
        state.chosen = list(self._chosen(state, stages))
        self._save(state)
        return state

    def _record(self, state: OptimizerState, event: str, specs: Sequence[Spec]) -> None:
        state.history.append(ScoredSet(list(specs), self.evaluate(specs), event))

    def stage1(self, state: OptimizerState) -> None:
        """Score each pool demonstration alone (sharded by ``map_fn``), then choose greedily. The seconds are
        clocked step by step and saved with the step, so a resumed fit's time counts every run."""
        todo = [u for u in self.pool_users if u not in state.pool_scores]
        bar = tqdm(total=len(self.pool_users), initial=len(self.pool_users) - len(todo), ncols=100,
                   desc="LRGD stage 1 (pool)", unit="demo", disable=not self.show_progress)
        chunk = self.round_size  # one demonstration per process, then the state is saved: a fit resumes
        for start in range(0, len(todo), chunk):
            begun, part = time.time(), todo[start: start + chunk]
            for user, scored in zip(part, self.map_fn(lambda u: self.evaluate([(u, 0)]).to_dict(), part)):
                evaluation = Evaluation.from_dict(scored)  # scored by another process, maybe
                state.pool_scores[user] = evaluation
                self._memo[set_key([(user, 0)])] = evaluation
            state.add_seconds("stage1", time.time() - begun, processes=len(part))
            state.add_pool_demos(len(part))
            self._save(state)
            bar.update(len(part))
        bar.close()
        begun = time.time()
        chosen = self.greedy({u: e.objective for u, e in state.pool_scores.items()})
        state.stage1 = ScoredSet(chosen, self.evaluate(chosen))
        self._record(state, "stage 1", chosen)
        state.add_seconds("stage1", time.time() - begun)
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

    def stage2(self, state: OptimizerState) -> None:
        """Coordinate search with accept-if-better, early stop and the collapse guard."""
        s = self.settings
        if state.stage2 and state.stage2.done:
            return
        first = state.stage1
        st = state.stage2 or Stage2Search(current=list(first.specs),
                                          best_safe=list(first.specs) if first.evaluation.effect >= 0 else None)
        state.stage2 = st
        pool_scores = state.ranking_scores()
        ranked = sorted(pool_scores, key=lambda u: (-pool_scores[u].objective, u))
        bar = tqdm(total=s.stage2_steps, initial=st.step, ncols=100, desc="LRGD stage 2 (search)",
                   unit="move", disable=not self.show_progress)
        while not st.done and st.step < s.stage2_steps and st.rejected < s.stage2_patience:
            begun, current = time.time(), st.current
            proposal = self._move(current, st.step, ranked)
            st.step += 1
            bar.update(1)
            if proposal is None or self.evaluate(proposal).objective <= self.evaluate(current).objective:
                st.rejected += 1
            else:
                st.rejected = 0
                st.current = proposal
                self._record(state, "accept", proposal)
                self._guard(state)
            state.add_seconds("stage2", time.time() - begun)
            self._save(state)
        bar.close()
        self._guard(state)
        st.done = True

    def _guard(self, state: OptimizerState) -> None:
        """Track the best non-collapsed set; revert to it when the current set's Effect is below zero."""
        st = state.stage2
        evaluation = self.evaluate(st.current)
        if evaluation.effect >= 0:
            if st.best_safe is None or evaluation.objective > self.evaluate(st.best_safe).objective:
                st.best_safe = list(st.current)
        elif st.best_safe is not None:
            st.current = list(st.best_safe)
            self._record(state, "collapse guard: revert", st.best_safe)

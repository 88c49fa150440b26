"""The in-context-learning ranker: prompt = demonstrations + the user's history + candidates, scored by an LLM.

``LRGD.predict`` and the demonstration optimizer both rank through one ``ICLRanker``, so a set the
optimizer measures on probe users is shown to test users in exactly the same prompts.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from recbole_lrgd.data.demonstrations import DemoChoice, DemoItems, DemoPolicy, DemonstrationPool
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.prompt import (DEFAULT_INSTRUCTION, DEMO_FORMATS, Demonstration, Prompt, build_prompt,
                                     render_demonstration)
from recbole_lrgd.llm.scorer import Scorer
from recbole_lrgd.settings import DemoSettings, PromptSettings

UserCandidates = Tuple[int, Sequence[int], Sequence[int]]  # (user, history item ids, candidate item ids)


class ICLRanker:
    """Titles, the demonstration pool, the prompt and demonstration settings and the scorer, built once.

    ``pool`` is None for prompts alone (zero-shot prompts: the prompt budget's check). ``policy(choice)`` binds a
    choice to the pool and K; ``variant`` is a new ranker with other settings (the study's formats and K).
    """

    def __init__(self, titles: Sequence[str], scorer: Scorer, settings: PromptSettings, demos: DemoSettings,
                 pool: Optional[DemonstrationPool] = None):
        self.titles, self.scorer, self.settings, self.demos, self.pool = titles, scorer, settings, demos, pool

    def variant(self, scorer: Optional[Scorer] = None, **keys: Any) -> "ICLRanker":
        """The same ranker with other prompt or demonstration ``keys`` (and, where given, another scorer)."""
        prompt = {k: v for k, v in keys.items() if k in PromptSettings.__dataclass_fields__}
        demos = {k: v for k, v in keys.items() if k in DemoSettings.__dataclass_fields__}
        unknown = set(keys) - set(prompt) - set(demos)
        if unknown:
            raise ValueError(f"not a prompt or demonstration key: {', '.join(sorted(unknown))}")
        return ICLRanker(self.titles, scorer or self.scorer, replace(self.settings, **prompt),
                         replace(self.demos, **demos), self.pool)

    # -- demonstrations --------------------------------------------------------------------------
    def policy(self, choice: DemoChoice) -> DemoPolicy:
        """``choice`` bound to this ranker's pool and K."""
        return DemoPolicy(choice, self.pool, self.demos.num_demos)

    def render(self, demo: DemoItems) -> Demonstration:
        """A demonstration's titles; with a format that shows others, its seeded others and the target's slot."""
        history, target = demo
        others, slot = (), 0
        if DEMO_FORMATS[self.settings.demo_format].uses_others:
            others = tuple(self.titles[i] for i in self.pool.negatives(demo, self.settings.demo_negatives, self.demos.seed))
            slot = self.pool.target_slot(demo, len(others), self.demos.seed)
        return Demonstration(tuple(self.titles[i] for i in history), self.titles[target], others, slot)

    def demonstration_tokens(self, demo: DemoItems) -> int:
        """Tokens one demonstration adds to a prompt, in its format (the optimizer's token budget)."""
        text = "\n".join(render_demonstration(1, self.render(demo), self.settings.demo_format))
        return len(self.scorer.tokenizer(text, add_special_tokens=False).input_ids)

    # -- prompts and scores ----------------------------------------------------------------------
    def prompt(self, user: int, history: Sequence[int], candidates: Sequence[int],
               demos: Sequence[DemoItems]) -> Prompt:
        """The prompt for one user, candidate list and demonstrations; shuffling is seeded by (seed, user)."""
        if len(history) == 0:
            raise LRGDError(f"user {user} has an empty history: filter users with user_inter_num_interval")
        settings = self.settings
        return build_prompt(
            self.scorer.tokenizer, [self.render(d) for d in demos],
            [self.titles[i] for i in history[-settings.max_his_len:]], [self.titles[i] for i in candidates],
            seed=(self.demos.seed, int(user)), mode=self.scorer.mode, max_tokens=settings.max_prompt_tokens,
            instruction=settings.prompt_instruction or DEFAULT_INSTRUCTION, list_candidates=settings.listed,
            demo_format=settings.demo_format)

    def score(self, prompts: Sequence[Prompt]) -> List[np.ndarray]:
        """Scores of each prompt in its caller's candidate order, all in one batched ``score_many`` call."""
        return self.scorer.score_many(list(prompts))

    def score_users(self, users: Sequence[UserCandidates], policy: DemoPolicy, zero_shot: bool = False
                    ) -> Tuple[List[np.ndarray], Optional[List[np.ndarray]]]:
        """Each user's candidate scores with the demonstrations ``policy`` gives it, and with ``zero_shot``
        also without them (EffectD's l_0; the same prompt, not scored again, for a user who sees none).
        All prompts go through one ``score`` call."""
        prompts, zero_prompts = [], []  # the latter: (index in users, zero-shot prompt)
        for k, (user, history, candidates) in enumerate(users):
            demos = policy.demonstrations(user, history)
            prompts.append(self.prompt(user, history, candidates, demos))
            if zero_shot and demos:
                zero_prompts.append((k, self.prompt(user, history, candidates, [])))
        got = self.score(prompts + [p for _, p in zero_prompts])
        scores = got[: len(prompts)]
        if not zero_shot:
            return scores, None
        without = list(scores)
        for (k, _), user_scores in zip(zero_prompts, got[len(prompts):]):
            without[k] = user_scores
        return scores, without

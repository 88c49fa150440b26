"""The in-context-learning ranker: prompt = demonstrations + the user's history + candidates, scored by an LLM.

``LRGD.predict`` and the demonstration optimizer both rank through one ``ICLRanker``, so a set the
optimizer measures on probe users is shown to test users in exactly the same prompts.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from recbole_lrgd.data.demonstrations import DemoChoice, DemoItems, DemonstrationPool
from recbole_lrgd.errors import LRGDError
from recbole_lrgd.llm.prompt import DEMO_FORMATS, Demonstration, Prompt, build_prompt, render_demonstration
from recbole_lrgd.llm.scorer import Scorer

UserCandidates = Tuple[int, Sequence[int], Sequence[int]]  # (user, history item ids, candidate item ids)


class ICLRanker:
    """Titles, the demonstration pool, the prompt settings and the scorer.

    ``pool`` is set once the training interactions are known (LRGD's fit); until then only zero-shot
    prompts can be built. ``num_demos`` is how many demonstrations a per-user choice retrieves;
    ``demo_format`` (a key of ``DEMO_FORMATS``) how each is shown, with ``demo_negatives`` others where
    the format shows them.
    """

    def __init__(self, titles: Sequence[str], scorer: Scorer, *, num_demos: int, max_his_len: int,
                 max_prompt_tokens: Optional[int], instruction: str, list_candidates: Optional[bool], seed: int,
                 demo_format: str, demo_negatives: int):
        self.titles, self.scorer = titles, scorer
        self.num_demos, self.max_his_len, self.max_prompt_tokens = num_demos, max_his_len, max_prompt_tokens
        self.instruction, self.list_candidates, self.seed = instruction, list_candidates, seed
        self.demo_format, self.demo_negatives = demo_format, demo_negatives
        self.pool: Optional[DemonstrationPool] = None

    # -- demonstrations --------------------------------------------------------------------------
    def demonstrations_for(self, user: int, history: Sequence[int], choice: DemoChoice) -> List[DemoItems]:
        """The demonstrations ``user`` sees under ``choice``, as item ids."""
        return [self.pool.demonstration(*spec) for spec in choice.for_user(self.pool, user, history, self.num_demos)]

    def render(self, demo: DemoItems) -> Demonstration:
        """A demonstration's titles; with a format that shows others, its seeded others and the target's slot."""
        history, target = demo
        others, slot = (), 0
        if DEMO_FORMATS[self.demo_format].uses_others:
            others = tuple(self.titles[i] for i in self.pool.negatives(demo, self.demo_negatives, self.seed))
            slot = self.pool.target_slot(demo, len(others), self.seed)
        return Demonstration(tuple(self.titles[i] for i in history), self.titles[target], others, slot)

    def demonstration_tokens(self, demo: DemoItems) -> int:
        """Tokens one demonstration adds to a prompt, in its format (the optimizer's token budget)."""
        text = "\n".join(render_demonstration(1, self.render(demo), self.demo_format))
        return len(self.scorer.tokenizer(text, add_special_tokens=False).input_ids)

    # -- prompts and scores ----------------------------------------------------------------------
    def prompt(self, user: int, history: Sequence[int], candidates: Sequence[int],
               demos: Sequence[DemoItems]) -> Prompt:
        """The prompt for one user, candidate list and demonstrations; shuffling is seeded by (seed, user)."""
        if len(history) == 0:
            raise LRGDError(f"user {user} has an empty history: filter users with user_inter_num_interval")
        return build_prompt(
            self.scorer.tokenizer, [self.render(d) for d in demos],
            [self.titles[i] for i in history[-self.max_his_len:]], [self.titles[i] for i in candidates],
            seed=(self.seed, int(user)), mode=self.scorer.mode, max_tokens=self.max_prompt_tokens,
            instruction=self.instruction, list_candidates=self.list_candidates, demo_format=self.demo_format)

    def score(self, prompts: Sequence[Prompt]) -> List[np.ndarray]:
        """Scores of each prompt in its caller's candidate order, all in one batched ``score_many`` call."""
        return self.scorer.score_many(list(prompts))

    def score_users(self, users: Sequence[UserCandidates], choice: DemoChoice, zero_shot: bool = False
                    ) -> Tuple[List[np.ndarray], Optional[List[np.ndarray]]]:
        """Each user's candidate scores with the demonstrations ``choice`` gives it, and with ``zero_shot``
        also without them (EffectD's l_0; the same prompt, not scored again, for a user who sees none).
        All prompts go through one ``score`` call."""
        prompts, zero_prompts = [], []  # the latter: (index in users, zero-shot prompt)
        for k, (user, history, candidates) in enumerate(users):
            demos = self.demonstrations_for(user, history, choice)
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

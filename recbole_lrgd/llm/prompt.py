"""The one prompt builder: instruction, demonstrations, the user's history, shuffled candidates.

Everything here is a pure function of titles and a tokenizer, so it is tested without a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from recbole_lrgd.errors import LRGDError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


DEFAULT_INSTRUCTION = (
    "You are a recommender system. From a user's history of items, in the order they were "
    "chosen, recommend the item the user will choose next."
)
VERBALIZER_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_QUESTION = "Which candidate will the user choose next? Answer with its letter."
RANKING_QUESTION = ("Rank all the candidates by how likely the user is to choose each one next, most likely "
                    "first. Answer with the candidate numbers only, separated by commas.")
USER_MARKER = "Now the user."  # where the part shared by all users (instruction + demonstrations) ends


@dataclass(frozen=True)
class Demonstration:
    """Another user's history (titles, oldest first) and the item they really chose next; ``others``
    are items that user did not choose, which some formats show (``slot``: where ``listed`` puts the
    target among them)."""

    history: Tuple[str, ...]
    target: str
    others: Tuple[str, ...] = ()
    slot: int = 0


@dataclass
class Prompt:
    """A rendered prompt and how its shown candidates map back to the caller's candidates."""

    text: str
    order: List[int]  # order[k] = index (in the caller's candidate list) of the k-th shown candidate
    candidates: List[str]  # titles in the caller's order
    labels: List[str] = field(default_factory=list)  # verbalizer labels, in shown order
    history: Tuple[str, ...] = ()
    demonstrations: Tuple[Demonstration, ...] = ()

    @property
    def split(self) -> int:
        """Character offset where the user's own part begins; what comes before is a shared prefix."""
        return self.text.index(USER_MARKER)


def shuffled_order(n: int, seed: Sequence[int]) -> List[int]:
    """A seeded permutation; seeding by (seed, user) makes it independent of batching and sharding."""
    return [int(i) for i in np.random.default_rng(list(seed)).permutation(n)]


def format_history(titles: Sequence[str]) -> str:
    return "; ".join(titles) if titles else "(none)"


class DemoFormat:
    """How a demonstration is shown: its number and history, then the lines of ``answer``. A small LLM
    copies a demonstration's target; the formats differ in what surrounds that target."""

    uses_others = False  # whether a demonstration needs its ``others`` filled

    def lines(self, k: int, demo: Demonstration) -> List[str]:
        """The lines of the k-th demonstration (1-based) in a prompt."""
        return [f"Example {k}.", f"History: {format_history(demo.history)}", *self.answer(demo), ""]

    def answer(self, demo: Demonstration) -> List[str]:
        raise NotImplementedError


class NextItem(DemoFormat):
    """The item chosen next, alone."""

    def answer(self, demo: Demonstration) -> List[str]:
        return [f"Next item: {demo.target}"]


class Listed(DemoFormat):
    """The demonstration's candidates (its others, the target at ``slot``), then the one it chose."""

    uses_others = True

    def answer(self, demo: Demonstration) -> List[str]:
        shown = list(demo.others)
        shown.insert(demo.slot, demo.target)
        return [f"Candidates: {format_history(shown)}", f"Chose: {demo.target}"]


class Contrast(DemoFormat):
    """Items the demonstration's user did not choose, then the one chosen next."""

    uses_others = True

    def answer(self, demo: Demonstration) -> List[str]:
        return [f"Not chosen: {format_history(demo.others)}", f"Next item: {demo.target}"]


DEMO_FORMATS: Dict[str, DemoFormat] = {"next_item": NextItem(), "listed": Listed(), "contrast": Contrast()}


def render_demonstration(k: int, demo: Demonstration, demo_format: str) -> List[str]:
    """The lines of the k-th demonstration (1-based) in a prompt, in the format named ``demo_format``."""
    return DEMO_FORMATS[demo_format].lines(k, demo)


def render_message(instruction: str, demos: Sequence[Demonstration], history: Sequence[str],
                   shown: Sequence[str], *, demo_format: str, labels: Sequence[str] = (),
                   list_candidates: bool = True, question: str = LETTER_QUESTION) -> str:
    """The user turn of the chat: demonstrations first (their shared text is a common prefix), each in
    ``demo_format``. ``question`` follows a labelled list (letters for the verbalizer, numbers for
    generate mode)."""
    lines = [instruction, ""]
    for k, demo in enumerate(demos, 1):
        lines += render_demonstration(k, demo, demo_format)
    lines += [USER_MARKER, f"History: {format_history(history)}"]
    if labels:
        lines += ["Candidates:"] + [f"{label}. {title}" for label, title in zip(labels, shown)]
        lines += ["", question]
    elif list_candidates:
        lines += ["Candidates:"] + [f"- {title}" for title in shown]
        lines += ["", "Which candidate will the user choose next? Answer with its title."]
    else:
        lines += ["", "Which item will the user choose next? Answer with its title."]
    return "\n".join(lines)


def apply_template(tokenizer: PreTrainedTokenizerBase, message: str) -> str:
    """Wrap the message in the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return message + "\nAnswer: "


def encode_parts(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> Tuple[List[int], List[int]]:
    """Token ids of the shared prefix and of the user's part, tokenised apart so that the prefix's
    ids (and so its KV cache) are the same for every user. A chat template holds its own special
    tokens; otherwise the tokenizer's (e.g. BOS) go on the prefix."""
    special = not getattr(tokenizer, "chat_template", None)
    prefix = tokenizer(prompt.text[: prompt.split], add_special_tokens=special).input_ids
    return prefix, tokenizer(prompt.text[prompt.split:], add_special_tokens=False).input_ids


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> List[int]:
    """All token ids of a prompt, exactly as the scorer feeds them."""
    prefix, suffix = encode_parts(tokenizer, prompt)
    return prefix + suffix


def truncate_to_budget(demos: Sequence[Demonstration], history: Sequence[str],
                       fits: Callable[[Sequence[Demonstration], Sequence[str]], bool]
                       ) -> Tuple[List[Demonstration], List[str]]:
    """Drop the oldest history items until ``fits``; candidates are never touched.

    Order of sacrifice: the oldest item of the longest demonstration history, down to one item each;
    then the user's oldest items, down to one; then whole demonstrations, the last first. A shortened
    demonstration keeps its target and others.
    """
    demos, history = [replace(d, history=tuple(d.history)) for d in demos], list(history)
    while not fits(demos, history):
        longest = max(range(len(demos)), key=lambda k: len(demos[k].history), default=None)
        if longest is not None and len(demos[longest].history) > 1:
            demos[longest] = replace(demos[longest], history=demos[longest].history[1:])
        elif len(history) > 1:
            history = history[1:]
        elif demos:
            demos = demos[:-1]
        else:
            break  # only the candidates are left: they are never dropped
    return demos, history


def build_prompt(tokenizer: PreTrainedTokenizerBase, demos: Sequence[Demonstration], history: Sequence[str],
                 candidates: Sequence[str], *, seed: Sequence[int], mode: str, demo_format: str,
                 max_tokens: Optional[int] = None, instruction: str = DEFAULT_INSTRUCTION,
                 list_candidates: Optional[bool] = None) -> Prompt:
    """Render the full prompt text for one user, shuffling candidates with ``seed``, within ``max_tokens``
    (``truncate_to_budget``; an ``LRGDError`` naming the minimum when even its shortest prompt is over).
    Demonstrations are shown in ``demo_format`` (a key of ``DEMO_FORMATS``).

    ``list_candidates=None`` lists them only where the scorer needs the list (verbalizer, generate): with title
    likelihood a listed title is copied, which flattens the scores (docs/prompt.md has the measurement).
    """
    if list_candidates is None:
        list_candidates = mode != "likelihood"
    order = shuffled_order(len(candidates), seed)
    shown = [candidates[i] for i in order]
    labels: List[str] = []
    question = LETTER_QUESTION
    if mode == "verbalizer":
        if len(candidates) > len(VERBALIZER_LABELS):
            raise ValueError(f"verbalizer mode labels at most {len(VERBALIZER_LABELS)} candidates")
        labels = list(VERBALIZER_LABELS[: len(candidates)])
    elif mode == "generate":  # numbered 1..N in shown order; the LLM writes the ranking
        labels, question = [str(k) for k in range(1, len(candidates) + 1)], RANKING_QUESTION

    def render(d, h) -> Prompt:
        text = apply_template(tokenizer, render_message(instruction, d, h, shown, demo_format=demo_format,
                                                        labels=labels, list_candidates=list_candidates,
                                                        question=question))
        return Prompt(text, order, list(candidates), labels, tuple(h), tuple(d))

    if not max_tokens:
        return render(demos, history)
    demos, history = truncate_to_budget(
        demos, history, lambda d, h: len(encode_prompt(tokenizer, render(d, h))) <= max_tokens)
    prompt = render(demos, history)
    if not demos and len(history) <= 1:  # truncation may have stopped at what it never drops
        needed = len(encode_prompt(tokenizer, prompt))
        if needed > max_tokens:
            parts = "the instruction, one history item and the candidates" if list_candidates or labels else \
                "the instruction and one history item"
            raise LRGDError(f"max_prompt_tokens {max_tokens} is too small: {parts} alone take {needed} tokens; "
                            f"set max_prompt_tokens to at least {needed} (or ~ for no limit)")
    return prompt

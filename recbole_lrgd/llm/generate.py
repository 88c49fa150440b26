"""Generate mode (as in LLMRank): the LLM writes a ranked list of the numbered candidates; we parse it.

The parser is pure functions of the generated text and the shown titles, tested without a model. An
entry of the output is read as a candidate's title when its text matches one (difflib ratio >= a
threshold, or the title contained in it), otherwise as the candidate's number ("3", "3.", "[3]", "(3)",
"#3"): a small LLM often numbers its own list 1, 2, 3... in front of the titles, so a title beats a
number. Duplicates and numbers out of range are ignored; candidates never mentioned rank last, in their
shown order. ``GenerateScorer`` runs the LLM and turns the parsed ranking into scores.
"""
from __future__ import annotations

import copy
import difflib
import re
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
import torch

from recbole_lrgd.llm.batching import Batching
from recbole_lrgd.llm.prompt import Prompt, encode_parts
from recbole_lrgd.llm.score_cache import ScoreCache
from recbole_lrgd.llm.counts import ParseStats
from recbole_lrgd.llm.scorer import Scorer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_BULLET = r"\s*(?:[-*\u2022>]\s*)?"
_INDEX = re.compile(_BULLET + r"(?:(?:candidate|item|option|no\.?)\s*|#)?"
                    r"(?:\[(\d+)\]|\((\d+)\)|(\d+)\s*[.):\]](?!\d)|(\d+)\s*$)", re.IGNORECASE)
_ONLY_INDICES = re.compile(r"^[\s\d\[\]().,;:>#\-*\u2022|/]*$")  # "3, 1, 2", "[3] > [1]", "3 1 2"
_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
_LEAD_IN = re.compile(r"^\s*[A-Za-z][A-Za-z ]{0,30}:")  # "Ranking: 3, 1, 2"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def title_forms(title: str) -> List[str]:
    """A title as an LLM may write it: whole, and without a trailing "(1995)"-style parenthesis."""
    full = normalise(title)
    short = _TRAILING_PAREN.sub("", full).strip()
    return [full, short] if short and short != full else [full]


def match_title(text: str, titles: Sequence[str], threshold: float) -> Optional[int]:
    """Index of the title that ``text`` names: a whole title contained in it as words (longest wins),
    else the best fuzzy ratio of any form of a title at or above ``threshold``; else None."""
    entry = normalise(text)
    if not entry:
        return None
    forms = [title_forms(t) for t in titles]
    contained = [k for k, f in enumerate(forms) if f[0] and re.search(r"(?<!\w)" + re.escape(f[0]) + r"(?!\w)", entry)]
    if contained:
        return max(contained, key=lambda k: len(forms[k][0]))
    ratios = [max(difflib.SequenceMatcher(None, entry, form).ratio() for form in f) for f in forms]
    best = int(np.argmax(ratios)) if ratios else -1
    return best if best >= 0 and ratios[best] >= threshold else None


def split_entries(text: str) -> List[str]:
    """Entries of a generated list: one per line, and one per number on a line of numbers only
    (after an optional lead-in such as "Ranking:")."""
    entries: List[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        numbers = line.split(":", 1)[1] if _LEAD_IN.match(line) else line
        if _ONLY_INDICES.match(numbers) and re.search(r"\d", numbers):
            entries += re.findall(r"\d+", numbers)
        else:
            entries.append(line)
    return entries


def parse_entry(entry: str, titles: Sequence[str], threshold: float) -> Optional[int]:
    """The 0-based shown index an entry names, or None (out of range or nothing recognisable)."""
    found = _INDEX.match(entry)
    number = next((int(g) for g in found.groups() if g), None) if found else None
    rest = entry[found.end():] if found else entry
    by_title = match_title(rest.strip(" \t:-.*\"'"), titles, threshold) if rest.strip() else None
    if by_title is not None:
        return by_title
    if number is not None and 1 <= number <= len(titles):
        return number - 1
    return None


def parse_ranking(text: str, titles: Sequence[str], threshold: float) -> List[int]:
    """Shown indices (0-based) in the order the output ranks them, each once."""
    ranking: List[int] = []
    for entry in split_entries(text):
        k = parse_entry(entry, titles, threshold)
        if k is not None and k not in ranking:
            ranking.append(k)
    return ranking


def complete_ranking(ranking: Sequence[int], n: int) -> List[int]:
    """The parsed ranking followed by the candidates it never mentioned, in their shown order."""
    mentioned = set(ranking)
    return list(ranking) + [k for k in range(n) if k not in mentioned]


def ranking_scores(ranking: Sequence[int], n: int) -> np.ndarray:
    """Scores in shown order, descending along the completed ranking (n for the first, 1 for the last)."""
    scores = np.empty(n, dtype=np.float64)
    scores[complete_ranking(ranking, n)] = np.arange(n, 0, -1, dtype=np.float64)
    return scores


class GenerateScorer(Scorer):
    """Generate mode behind the scorer interface: one greedy generation per prompt on the shared prefix's
    KV cache, parsed into a ranking; scores descend along it. The score cache holds the parsed ranking
    per prompt (its key includes ``max_new_tokens`` and ``match_threshold``)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batching: Batching,
                 score_cache: Optional[ScoreCache], model_id: str, max_new_tokens: int, match_threshold: float):
        super().__init__(model, tokenizer, "generate", batching=batching, score_cache=score_cache, model_id=model_id)
        self.max_new_tokens, self.match_threshold = max(1, int(max_new_tokens)), float(match_threshold)

    @torch.inference_mode()
    def score_many(self, prompts: Sequence[Prompt]) -> List[np.ndarray]:
        """Scores of each prompt in its caller's candidate order, one generation per uncached prompt."""
        return [self._score(prompt) for prompt in prompts]

    def _score(self, prompt: Prompt) -> np.ndarray:
        prefix_ids, suffix_ids = encode_parts(self.tokenizer, prompt)
        shown = [prompt.candidates[i] for i in prompt.order]
        key = self._digest(prefix_ids + suffix_ids, self.max_new_tokens, self.match_threshold)
        found = self._lookup(None if key is None else [key], weight=len(shown))
        if key in found:
            ranking = [int(k) for k in found[key]]
        else:
            ranking = parse_ranking(self.generate(prefix_ids, suffix_ids), shown, self.match_threshold)
            if key is not None:
                self.score_cache.put({key: ranking})
        self.counts.add_parse(ParseStats(len(ranking), len(shown)))
        return self.caller_order(prompt, ranking_scores(ranking, len(shown)))

    def generate(self, prefix_ids: Sequence[int], suffix_ids: Sequence[int]) -> str:
        """Greedy continuation of prefix + suffix, decoded; the prefix's KV cache is reused and left intact."""
        cache, _ = self._prefix(prefix_ids)
        ids = torch.tensor([list(prefix_ids) + list(suffix_ids)])
        try:
            out = self.lm.generate(ids, cache, self._greedy_config())
        finally:
            self.lm.crop(cache, len(prefix_ids))
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def _greedy_config(self):
        """The model's generation config (its stop tokens) made greedy, with our token budget."""
        config = copy.deepcopy(self.model.generation_config)
        config.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                      max_new_tokens=self.max_new_tokens)
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        return config

"""What a scorer did: cache hits and misses, the tokens its forward passes ran (pads counted), and in generate
mode how much of each output was understood. ``Scorer.counts`` sums them over its prompts."""
from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class ParseStats:
    """How much of one output was understood: a prompt with ``mentioned == 0`` is a parse failure."""

    mentioned: int
    candidates: int

    @property
    def failed(self) -> bool:
        return self.mentioned == 0

    @property
    def unparsed(self) -> int:
        return self.candidates - self.mentioned


@dataclass
class ScoreCounts:
    """What a scorer did, summed over its prompts; subtract two snapshots for one evaluation."""

    cache_hits: int = 0  # candidate scores served from the score cache
    cache_misses: int = 0  # candidate scores looked up there in vain (then computed and stored)
    generated_prompts: int = 0  # generate mode: prompts whose output was parsed (cached or not)
    failed_prompts: int = 0  # ... whose output mentioned no candidate
    generated_candidates: int = 0  # ... candidates shown in them
    unparsed_candidates: int = 0  # ... candidates their outputs never mentioned
    forward_tokens: int = 0  # likelihood and verbalizer: token positions run through the model, pads included
    pad_tokens: int = 0  # ... of them pads (rows right-padded to their batch's longest)

    def __sub__(self, other: "ScoreCounts") -> "ScoreCounts":
        return ScoreCounts(*(a - b for a, b in zip(astuple(self), astuple(other))))

    @property
    def cache_hit_rate(self) -> Optional[float]:
        looked_up = self.cache_hits + self.cache_misses
        return self.cache_hits / looked_up if looked_up else None

    @property
    def pad_share(self) -> Optional[float]:
        return self.pad_tokens / self.forward_tokens if self.forward_tokens else None

    @property
    def parse_failure_rate(self) -> Optional[float]:
        return self.failed_prompts / self.generated_prompts if self.generated_prompts else None

    @property
    def unparsed_rate(self) -> Optional[float]:
        return self.unparsed_candidates / self.generated_candidates if self.generated_candidates else None

    def add_forward(self, lengths: Sequence[int]) -> None:
        """One forward pass of rows of these lengths, right-padded to the longest."""
        self.forward_tokens += len(lengths) * max(lengths)
        self.pad_tokens += len(lengths) * max(lengths) - sum(lengths)

    def add_parse(self, stats: ParseStats) -> None:
        self.generated_prompts += 1
        self.failed_prompts += int(stats.failed)
        self.generated_candidates += stats.candidates
        self.unparsed_candidates += stats.unparsed

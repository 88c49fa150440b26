"""Which tokens of a prompt are demonstrations, which are the query, which are context.

The split is given as token index ranges (half-open ``(start, end)``) so it can be tested; the
helpers here derive it from character ranges via the tokenizer's offsets mapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from recbole_lrgd.errors import LRGDError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


Span = Tuple[int, int]


@dataclass(frozen=True)
class PromptSplit:
    """Token ranges of a prompt: demonstrations (one range each) and the query span.

    Every token before the query span that is in no demonstration is zero-shot context (X_Q:
    instruction, headers, the user's own history). Query tokens must come after all
    demonstrations, so that with the causal mask each query sees every demonstration and the
    dual model's ICL update dW_ICL is the same for all of them.
    """

    demos: Tuple[Span, ...]
    query: Span

    def __init__(self, demos: Sequence[Span], query: Span):
        object.__setattr__(self, "demos", tuple((int(a), int(b)) for a, b in demos))
        object.__setattr__(self, "query", (int(query[0]), int(query[1])))

    def validate(self, num_tokens: int) -> "PromptSplit":
        """Raise ``LRGDError`` unless the spans are non-empty, in range, disjoint and ordered."""
        q0, q1 = self.query
        if not 0 <= q0 < q1 <= num_tokens:
            raise LRGDError(f"query span {self.query} is empty or outside the prompt's {num_tokens} tokens")
        last = -1
        for a, b in sorted(self.demos):
            if not 0 <= a < b <= num_tokens:
                raise LRGDError(f"demonstration span {(a, b)} is empty or outside the prompt's {num_tokens} tokens")
            if a < last:
                raise LRGDError(f"demonstration spans overlap at {(a, b)}")
            if b > q0:
                raise LRGDError(f"demonstration span {(a, b)} does not end before the query span {self.query}")
            last = b
        return self

    def demo_of_token(self, num_tokens: int) -> List[Optional[int]]:
        """Per token: the index of its demonstration, or None (context or query)."""
        tags: List[Optional[int]] = [None] * num_tokens
        for j, (a, b) in enumerate(self.demos):
            for i in range(a, b):
                tags[i] = j
        return tags


def find_char_spans(text: str, parts: Sequence[str], start: int = 0) -> List[Span]:
    """Character ranges of ``parts`` in ``text``, searched in order (each after the previous)."""
    spans: List[Span] = []
    pos = start
    for part in parts:
        i = text.find(part, pos)
        if i < 0:
            raise LRGDError(f"{part!r} not found in the prompt (after character {pos})")
        spans.append((i, i + len(part)))
        pos = i + len(part)
    return spans


def token_spans_from_char_spans(offsets: Sequence[Tuple[int, int]], char_spans: Sequence[Span]) -> List[Span]:
    """Map character ranges to token ranges with a tokenizer's ``offset_mapping``.

    A token belongs to a range when its characters overlap it; special tokens (offset (0, 0)
    or empty) belong to none. A range that covers no token is an error, since a silently empty
    demonstration would make the split lie.
    """
    out: List[Span] = []
    for c0, c1 in char_spans:
        hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < c1 and b > c0]
        if not hit:
            raise LRGDError(f"character span {(c0, c1)} covers no token")
        out.append((hit[0], hit[-1] + 1))
    return out


def split_prompt(tokenizer: PreTrainedTokenizerBase, text: str, demo_texts: Sequence[str], query_text: str
                 ) -> Tuple[List[int], PromptSplit]:
    """Tokenise ``text`` and locate its demonstrations and its query (the user's part).

    Returns ``(input_ids, PromptSplit)``; ``demo_texts`` and ``query_text`` must occur in
    ``text`` in that order.
    """
    chars = find_char_spans(text, list(demo_texts) + [query_text])
    return tokenize_split(tokenizer, text, chars[:-1], chars[-1])


def tokenize_split(tokenizer: PreTrainedTokenizerBase, text: str, demo_chars: Sequence[Span], query_chars: Span
                   ) -> Tuple[List[int], PromptSplit]:
    """Tokenise ``text`` and turn character ranges into a validated ``PromptSplit``.

    Returns ``(input_ids, PromptSplit)``. Needs a fast tokenizer (offsets mapping).
    """
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    offsets = enc.get("offset_mapping")
    if offsets is None:
        raise LRGDError("the tokenizer gives no offsets mapping; pass token spans instead")
    spans = token_spans_from_char_spans(offsets, list(demo_chars) + [query_chars])
    return list(enc["input_ids"]), PromptSplit(spans[:-1], spans[-1]).validate(len(enc["input_ids"]))


DEMO_TAG = ("<demo>", "</demo>")
QUERY_TAG = ("<query>", "</query>")


def parse_marked_prompt(marked: str) -> Tuple[str, List[Span], Span]:
    """Strip ``<demo>..</demo>`` and ``<query>..</query>`` marks from a prompt.

    Returns ``(text, demo_char_spans, query_char_span)`` in the clean text; exactly one query.
    This is the ``--prompt-file`` format: the marks say which text is which, the model never
    sees them.
    """
    text: List[str] = []
    demos: List[Span] = []
    queries: List[Span] = []
    pos = 0
    length = 0
    opens = {DEMO_TAG[0]: (DEMO_TAG[1], demos), QUERY_TAG[0]: (QUERY_TAG[1], queries)}
    while True:
        found = [(marked.find(tag, pos), tag) for tag in opens]
        found = [(i, tag) for i, tag in found if i >= 0]
        if not found:
            text.append(marked[pos:])
            break
        i, tag = min(found)
        close, target = opens[tag]
        j = marked.find(close, i + len(tag))
        if j < 0:
            raise LRGDError(f"{tag} at character {i} has no {close}")
        text.append(marked[pos:i])
        length += i - pos
        inner = marked[i + len(tag):j]
        if any(t in inner for t in (*DEMO_TAG, *QUERY_TAG)):
            raise LRGDError(f"nested marks inside {tag} at character {i}")
        text.append(inner)
        target.append((length, length + len(inner)))
        length += len(inner)
        pos = j + len(close)
    if len(queries) != 1:
        raise LRGDError(f"the prompt needs exactly one <query>..</query> part, found {len(queries)}")
    return "".join(text), demos, queries[0]


def split_marked_prompt(tokenizer: PreTrainedTokenizerBase, marked: str) -> Tuple[str, List[int], PromptSplit]:
    """``parse_marked_prompt`` then tokenise: returns ``(text, input_ids, PromptSplit)``."""
    text, demo_chars, query_chars = parse_marked_prompt(marked)
    input_ids, split = tokenize_split(tokenizer, text, demo_chars, query_chars)
    return text, input_ids, split

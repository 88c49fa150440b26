"""Item titles as raw strings, indexed by RecBole's internal item id, whitespace-normalised and capped in tokens.

A title enters every prompt that shows its item, so one very long title (a product description in
the title field) would blow up every prompt; the cap is applied once, here, where titles are built.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

from recbole.utils import FeatureType

from recbole_lrgd.data.atomic import read_header
from recbole_lrgd.errors import LRGDError

UNTITLED = "(untitled item {raw_id})"


def item_file_header(data_path: str, dataset: str) -> List[str]:
    """Field names (without types) of ``<data_path>/<dataset>.item``, read before RecBole loads it."""
    path = os.path.join(data_path, f"{dataset}.item")
    if not os.path.isfile(path):
        raise LRGDError(f"dataset {dataset!r} has no item file {path}: LRGD needs item titles from <name>.item")
    return [field for field, _ in read_header(path)]


def item_titles(dataset, title_field: str, tokenizer=None, max_tokens: Optional[int] = None) -> List[str]:
    """One title per internal item id, runs of whitespace (tabs, newlines) as one space, capped at
    ``max_tokens`` tokens of ``tokenizer`` when both are given; items without a title get a clear placeholder."""
    if title_field not in dataset.field2type:
        raise LRGDError(
            f"dataset {dataset.dataset_name!r} has no title field {title_field!r} "
            f"(set title_field and load it with load_col: {{item: [item_id, {title_field}]}})")
    ftype = dataset.field2type[title_field]
    if ftype not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
        raise LRGDError(f"title field {title_field!r} must be a token or token_seq field, not {ftype.value}")
    vocab = dataset.field2id_token[title_field]
    values = dataset.item_feat[title_field].numpy()
    raw_ids = dataset.field2id_token[dataset.iid_field]
    titles = []
    for iid in range(dataset.item_num):
        tokens = [values[iid]] if ftype == FeatureType.TOKEN else values[iid]
        words = " ".join(str(vocab[t]) for t in tokens if t != 0).split()
        titles.append(" ".join(words) if words else UNTITLED.format(raw_id=raw_ids[iid]))
    return cap_tokens(titles, tokenizer, max_tokens) if tokenizer is not None and max_tokens else titles


def cap_tokens(texts: Sequence[str], tokenizer, max_tokens: int) -> List[str]:
    """Each text cut after its first ``max_tokens`` tokens (a prefix of the text, so a cut never
    splits a character); shorter texts unchanged."""
    texts = list(texts)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [text if len(spans) <= max_tokens else text[: spans[max_tokens - 1][1]].rstrip()
                for text, spans in zip(texts, enc["offset_mapping"])]
    ids = tokenizer(texts, add_special_tokens=False).input_ids
    return [text if len(row) <= max_tokens else tokenizer.decode(row[:max_tokens]).strip()
            for text, row in zip(texts, ids)]

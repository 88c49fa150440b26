"""Item titles as raw strings, indexed by RecBole's internal item id, whitespace-normalised and capped in tokens.

A title enters every prompt that shows its item, so one very long title (a product description in
the title field) would blow up every prompt; the cap is applied once, here, where titles are built.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, List, Optional, Sequence

import numpy as np
from recbole.utils import FeatureType

from recbole_lrgd.data.atomic import read_header
from recbole_lrgd.errors import LRGDError

if TYPE_CHECKING:
    from recbole.data.dataset import Dataset
    from transformers import PreTrainedTokenizerBase


UNTITLED = "(untitled item {raw_id})"

logger = logging.getLogger(__name__)


def item_file_header(data_path: str, dataset: str) -> List[str]:
    """Field names (without types) of ``<data_path>/<dataset>.item``, read before RecBole loads it."""
    path = os.path.join(data_path, f"{dataset}.item")
    if not os.path.isfile(path):
        raise LRGDError(f"dataset {dataset!r} has no item file {path}: LRGD needs item titles from <name>.item")
    return [field for field, _ in read_header(path)]


def _raw_titles(dataset, title_field: str) -> List[str]:
    """One title per internal item id, runs of whitespace (tabs, newlines) as one space; "" where none."""
    if title_field not in dataset.field2type:
        raise LRGDError(
            f"dataset {dataset.dataset_name!r} has no title field {title_field!r} "
            f"(set title_field and load it with load_col: {{item: [item_id, {title_field}]}})")
    ftype = dataset.field2type[title_field]
    if ftype not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ):
        raise LRGDError(f"title field {title_field!r} must be a token or token_seq field, not {ftype.value}")
    vocab = dataset.field2id_token[title_field]
    values = dataset.item_feat[title_field].numpy()
    titles = []
    for iid in range(dataset.item_num):
        tokens = [values[iid]] if ftype == FeatureType.TOKEN else values[iid]
        titles.append(" ".join(" ".join(str(vocab[t]) for t in tokens if t != 0).split()))
    return titles


def item_titles(dataset: Dataset, title_field: str, tokenizer: Optional[PreTrainedTokenizerBase] = None,
                max_tokens: Optional[int] = None) -> List[str]:
    """One title per internal item id, runs of whitespace (tabs, newlines) as one space, capped at
    ``max_tokens`` tokens of ``tokenizer`` when both are given; items without a title get a clear placeholder."""
    raw_ids = dataset.field2id_token[dataset.iid_field]
    titles = [title or UNTITLED.format(raw_id=raw_ids[iid])
              for iid, title in enumerate(_raw_titles(dataset, title_field))]
    return cap_tokens(titles, tokenizer, max_tokens) if tokenizer is not None and max_tokens else titles


def check_title_coverage(dataset: Dataset, title_field: str, candidates: np.ndarray, users: int) -> None:
    """One warning with the count and share of the items that have no title (each is shown as its placeholder);
    an ``LRGDError`` when they are more than half of ``candidates`` (internal ids, one per candidate the
    ``users`` evaluated users rank): then the title field or the .item file is likely the wrong one."""
    titled = np.array([bool(title) for title in _raw_titles(dataset, title_field)])
    items = dataset.item_num - 1  # id 0 is RecBole's padding
    untitled = items - int(titled[1:].sum())
    if not untitled:
        return
    where = f"field {title_field!r} of {os.path.join(dataset.dataset_path, dataset.dataset_name + '.item')}"
    count = f"{untitled:,} of {items:,} items ({untitled / items:.1%})"
    share = 1.0 - float(titled[np.asarray(candidates, dtype=np.int64)].mean()) if len(candidates) else 0.0
    if share > 0.5:
        raise LRGDError(f"{share:.1%} of the candidates of the {users:,} evaluated users have no title in {where} "
                        f"({count} have none): is title_field (or the .item file) the right one?")
    logger.warning(f"{count} have no title in {where}: prompts show each as {UNTITLED.format(raw_id='<its id>')}")


def cap_tokens(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> List[str]:
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

"""Item titles as raw strings, indexed by RecBole's internal item id."""
from __future__ import annotations

import os
from typing import List

from recbole.utils import FeatureType

from recbole_lrgd.errors import LRGDError

UNTITLED = "(untitled item {raw_id})"


def item_file_header(data_path: str, dataset: str) -> List[str]:
    """Field names (without types) of ``<data_path>/<dataset>.item``, read before RecBole loads it."""
    path = os.path.join(data_path, f"{dataset}.item")
    if not os.path.isfile(path):
        raise LRGDError(f"dataset {dataset!r} has no item file {path}: LRGD needs item titles from <name>.item")
    with open(path, encoding="utf-8") as f:
        return [col.split(":")[0] for col in f.readline().rstrip("\r\n").split("\t")]


def item_titles(dataset, title_field: str) -> List[str]:
    """One title per internal item id; items without a title get a clear placeholder."""
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
        words = [str(vocab[t]) for t in tokens if t != 0]
        titles.append(" ".join(words) if words else UNTITLED.format(raw_id=raw_ids[iid]))
    return titles

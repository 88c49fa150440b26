"""RecBole's atomic files (.inter, .user, .item) read line by line before RecBole hands them to pandas.

pandas names neither the file nor the line of a bad row: a tab inside a title shifts the columns (a
MultiIndex traceback deep inside RecBole), a word in a float column stops at "Unable to convert column
rating:float". One quick pass over the lines names both.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, List, Optional, Set, Tuple

from recbole.utils import FeatureType

from recbole_lrgd.errors import LRGDError

if TYPE_CHECKING:
    from recbole.config import Config


TYPES = tuple(t.value for t in FeatureType)
FLOAT_TYPES = (FeatureType.FLOAT.value, FeatureType.FLOAT_SEQ.value)

logger = logging.getLogger(__name__)


def parse_header(line: str, path: str, separator: str = "\t") -> List[Tuple[str, str]]:
    """``(field, type)`` of each column of an atomic file's first line (``user_id:token`` ...)."""
    if line.startswith("\ufeff"):
        raise LRGDError(f"{path} starts with a UTF-8 byte-order mark: save it without one")
    columns = []
    for column in line.rstrip("\r\n").split(separator):
        field, _, ftype = column.partition(":")
        if ftype not in TYPES:
            raise LRGDError(f"{path} line 1: column {column!r} is not name:type (type one of {', '.join(TYPES)})")
        columns.append((field, ftype))
    return columns


def read_header(path: str, separator: str = "\t", encoding: str = "utf-8") -> List[Tuple[str, str]]:
    """``parse_header`` of a file's first line."""
    with open(path, encoding=encoding) as f:
        return parse_header(f.readline(), path, separator)


def atomic_files(config: Config) -> List[Tuple[str, str]]:
    """``(path, suffix)`` of the atomic files RecBole will read for the config's dataset."""
    folder, name = config["data_path"], config["dataset"]
    inters = [f"{name}.{b}.inter" for b in config["benchmark_filename"] or []] or [f"{name}.inter"]
    paths = [(os.path.join(folder, f), "inter") for f in inters]
    paths += [(os.path.join(folder, f"{name}.{suffix}"), suffix) for suffix in ("user", "item")]
    return [(path, suffix) for path, suffix in paths if os.path.isfile(path)]


def loaded_fields(config: Config, suffix: str) -> Optional[Set[str]]:
    """The fields RecBole loads from a file by ``load_col`` (None: all), as RecBole reads it."""
    load_col = config["load_col"]
    if load_col is None or load_col.get(suffix) == "*":
        return None
    return set(load_col.get(suffix, ()))


def _is_number(value: str, ftype: str, seq_separator: str) -> bool:
    """A float field's value as pandas reads it: a number or empty (a float_seq: numbers between separators)."""
    parts = [value] if ftype == FeatureType.FLOAT.value else value.split(seq_separator)
    for part in parts:
        try:
            float(part)
        except ValueError:
            if part.strip():
                return False
    return True


def check_atomic_file(path: str, fields: Optional[Set[str]] = None, unloaded: Set[str] = frozenset(),
                      separator: str = "\t", seq_separator: str = " ", encoding: str = "utf-8") -> None:
    """Every line is ``encoding`` text with no more fields than the header, there is at least one line
    below the header (RecBole's "Some feat is empty" otherwise), and every loaded float field (in ``fields``,
    or all where None, less ``unloaded``) holds numbers."""
    sep = "tab" if separator == "\t" else repr(separator)
    rows = 0
    try:
        with open(path, encoding=encoding) as f:
            header = parse_header(f.readline(), path, separator)
            floats = [(k, f"{field}:{ftype}", ftype) for k, (field, ftype) in enumerate(header)
                      if ftype in FLOAT_TYPES and (fields is None or field in fields) and field not in unloaded]
            for lineno, line in enumerate(f, start=2):
                if line.strip("\r\n"):  # pandas skips blank lines
                    rows += 1
                values = line.rstrip("\r\n").split(separator)
                if len(values) > len(header):
                    raise LRGDError(f"{path} line {lineno}: {len(values)} {sep}-separated fields, the header has "
                                    f"{len(header)} (a {sep} inside a value?)")
                for k, column, ftype in floats:
                    try:
                        float(values[k])  # the common case, fast
                    except IndexError:
                        pass
                    except ValueError:
                        if not _is_number(values[k], ftype, seq_separator):
                            raise LRGDError(f"{path} line {lineno}: {column} value {values[k]!r} is not a number"
                                            ) from None
    except UnicodeDecodeError as exc:
        raise LRGDError(f"{path} line {_undecodable_line(path, encoding)}: not {encoding} text ({exc.reason})") from None
    if not rows:
        raise LRGDError(f"{path} has a header line but no data lines")


def _undecodable_line(path: str, encoding: str) -> int:
    """The first line that does not decode (text mode decodes in blocks, so its error has no line)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return lineno
    return 0


def _column(path: str, field: str, separator: str, encoding: str) -> Optional[List[str]]:
    """The values of ``field`` in an atomic file, one per data line (None when its header has no such field)."""
    with open(path, encoding=encoding) as f:
        names = [name for name, _ in parse_header(f.readline(), path, separator)]
        if field not in names:
            return None
        k = names.index(field)
        rows = (line.rstrip("\r\n").split(separator) for line in f if line.strip("\r\n"))
        return [values[k] if k < len(values) else "" for values in rows]


def check_feature_ids(config: Config, files: List[Tuple[str, str]], separator: str, encoding: str) -> None:
    """With ``filter_inter_by_user_or_item`` RecBole drops every interaction whose user (item) has no line in
    a loaded .user (.item) file: when that is all of them, one ``LRGDError`` here instead of RecBole's "Some
    feat is empty" traceback; when it is some, a warning with the count and share."""
    if config["filter_inter_by_user_or_item"] is not True:  # RecBole filters on True alone
        return
    inters = [path for path, suffix in files if suffix == "inter"]
    for suffix, field in (("user", config["USER_ID_FIELD"]), ("item", config["ITEM_ID_FIELD"])):
        feature_file = next((path for path, kind in files if kind == suffix), None)
        fields = loaded_fields(config, suffix)
        if feature_file is None or (fields is not None and field not in fields):
            continue  # no such file, or RecBole does not load it
        known = _column(feature_file, field, separator, encoding)
        ids = [value for path in inters for value in _column(path, field, separator, encoding) or ()]
        if known is None or not ids:
            continue  # RecBole names a missing id column itself
        known_ids = set(known)
        dropped = [value for value in ids if value not in known_ids]
        if not dropped:
            continue
        distinct, missing = len(set(ids)), len(set(dropped))
        if len(dropped) == len(ids):
            raise LRGDError(f"no {field} of {', '.join(inters)} is in {feature_file} (0 of {distinct:,} match): "
                            "RecBole would drop every interaction (filter_inter_by_user_or_item); do both files use "
                            "the same ids?")
        logger.warning(f"{missing:,} of {distinct:,} {suffix}s ({missing / distinct:.1%}) of {', '.join(inters)} have "
                       f"no line in {feature_file}: RecBole drops their {len(dropped):,} interactions "
                       f"(filter_inter_by_user_or_item)")


def check_atomic_files(config: Config) -> None:
    """Every atomic file RecBole will load for ``config``, checked with its separators, encoding and columns,
    and the ids of the .inter against those of the .user and .item (``check_feature_ids``)."""
    unload_col = config["unload_col"] or {}
    separator, encoding = config["field_separator"] or "\t", config["encoding"] or "utf-8"
    loaded = []
    for path, suffix in atomic_files(config):
        fields = loaded_fields(config, suffix)
        if fields is not None and not fields:
            continue  # RecBole skips a file none of whose columns it loads
        check_atomic_file(path, fields, set(unload_col.get(suffix, ())), separator,
                          config["seq_separator"] or " ", encoding)
        loaded.append((path, suffix))
    check_feature_ids(config, loaded, separator, encoding)

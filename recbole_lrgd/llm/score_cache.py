"""A persistent score cache: LLM scores survive the run, so a re-run (or another process) skips the LLM.

One SQLite file (stdlib) in WAL mode with a busy timeout, so several processes read and write it at
once. A key is a SHA-256 of what determines a score: the model's identity (``llm.model_identity``: its
files' sizes and mtimes or its hub revision, dtype, device type), the scorer mode, the exact prompt
token ids and the candidate (its token ids or its verbalizer label). A value is a float64 array
stored as raw bytes, so a cached score is bit-identical to the fresh one. A corrupt file is moved
aside to ``*.corrupt`` and a fresh one started; any other SQLite failure only turns the cache off,
with a warning: the cache never stops a run.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from recbole_lrgd.whole_file import quarantine

DB_NAME = "scores.sqlite"
BUSY_TIMEOUT_S = 60.0
_TABLE = "scores_v1"
_CORRUPT_NAMES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_CORRUPT_TEXT = ("not a database", "malformed", "corrupt")
_BUSY_NAMES = ("SQLITE_BUSY", "SQLITE_LOCKED")

logger = logging.getLogger(__name__)

Item = Union[str, Sequence[int]]


def prompt_digest(model_id: str, mode: str, prompt_ids: Sequence[int], *extra: object) -> bytes:
    """Hash of everything a prompt's scores depend on; ``extra`` holds mode settings (e.g. a token budget)."""
    h = hashlib.sha256()
    for part in (model_id, mode, *map(repr, extra)):
        h.update(part.encode("utf-8") + b"\0")
    h.update(np.asarray(prompt_ids, dtype="<i8").tobytes())
    return h.digest()


def item_key(digest: bytes, item: Item) -> bytes:
    """Key of one candidate's score under a prompt: its token ids, or its label when it is a string."""
    body = item.encode("utf-8") if isinstance(item, str) else np.asarray(item, dtype="<i8").tobytes()
    tag = b"s" if isinstance(item, str) else b"i"
    return hashlib.sha256(digest + tag + body).digest()


def is_corruption(exc: BaseException) -> bool:
    """SQLite's 'not a database' / 'malformed' errors, as opposed to a lock or a full disk."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(_CORRUPT_NAMES) or any(t in str(exc).lower() for t in _CORRUPT_TEXT)


def is_contention(exc: BaseException) -> bool:
    """'database is locked' / busy: another process holds the file for a moment. SQLite returns it without
    waiting in a few cases (two connections switching a new file to WAL at once), so opening retries it."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return isinstance(exc, sqlite3.OperationalError) and (
        name.startswith(_BUSY_NAMES) or any(t in str(exc).lower() for t in ("locked", "busy")))


class ScoreCache:
    """float64 arrays by key in one SQLite file; safe to share between processes."""

    def __init__(self, path: str, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path, self.busy_timeout_s = path, busy_timeout_s
        self._conn: Optional[sqlite3.Connection] = None
        self._open()

    @classmethod
    def in_dir(cls, folder: str) -> "ScoreCache":
        """The cache in ``folder`` (``score_cache_dir``)."""
        return cls(os.path.join(folder, DB_NAME))

    @property
    def enabled(self) -> bool:
        return self._conn is not None

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a crash loses the last writes, never the file
            ok = conn.execute("PRAGMA quick_check(1)").fetchone()
            if not ok or ok[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed ({ok[0] if ok else 'no answer'})")
            with conn:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (key BLOB PRIMARY KEY, value BLOB NOT NULL)"
                             " WITHOUT ROWID")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self) -> None:
        """Open the DB; contention is retried until the busy timeout, a corrupt file is moved aside once and
        replaced by a fresh one."""
        deadline, pause, moved = time.monotonic() + self.busy_timeout_s, 0.01, False
        while True:
            try:
                self._conn = self._connect()
                return
            except (sqlite3.Error, OSError) as exc:
                if is_contention(exc) and time.monotonic() + pause < deadline:
                    time.sleep(pause)
                    pause = min(2 * pause, 0.5)
                    continue
                if not moved and isinstance(exc, sqlite3.Error) and is_corruption(exc):
                    moved = True
                    logger.warning(f"score cache {self.path} is corrupt ({exc}): moved to "
                                   f"{self.path}.corrupt, starting a fresh one")
                    if not self._set_aside():
                        return
                    continue
                self._disable(exc)
                return

    def _set_aside(self) -> bool:
        """Move the corrupt file to ``*.corrupt``; where it cannot be moved, the cache is off (False)."""
        try:
            quarantine(self.path)
            return True
        except OSError as exc:
            self._disable(exc)
            return False

    def _disable(self, exc: BaseException) -> None:
        logger.warning(f"score cache {self.path} is off for this run: {exc}")
        self.close()

    def _failed(self, exc: sqlite3.Error) -> None:
        """A failure while in use: a corrupt file is replaced, anything else turns the cache off."""
        self.close()
        if is_corruption(exc):
            logger.warning(f"score cache {self.path} turned out corrupt ({exc}): moved aside, starting a fresh one")
            if self._set_aside():
                self._open()
        else:
            self._disable(exc)

    def get(self, keys: Sequence[bytes]) -> Dict[bytes, np.ndarray]:
        """The stored values of those ``keys`` that are present."""
        if self._conn is None or not keys:
            return {}
        found: Dict[bytes, np.ndarray] = {}
        try:
            for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = list(keys[start: start + 500])
                marks = ",".join("?" * len(chunk))
                for key, value in self._conn.execute(f"SELECT key, value FROM {_TABLE} WHERE key IN ({marks})", chunk):
                    found[bytes(key)] = np.frombuffer(value, dtype="<f8").astype(np.float64)
        except sqlite3.Error as exc:
            self._failed(exc)
            return {}
        return found

    def put(self, items: Mapping[bytes, Iterable[float]]) -> None:
        """Store values; a key already present keeps its first value, so every reader sees one score."""
        if self._conn is None or not items:
            return
        rows = [(key, np.asarray(value, dtype="<f8").tobytes()) for key, value in items.items()]
        try:
            with self._conn:
                self._conn.executemany(f"INSERT OR IGNORE INTO {_TABLE} (key, value) VALUES (?, ?)", rows)
        except sqlite3.Error as exc:
            self._failed(exc)

    def __len__(self) -> int:
        if self._conn is None:
            return 0
        return self._conn.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0]

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

"""Log records kept until the log file exists.

A run checks its data (building RecBole's dataset and loaders, which log) and loads its LLM before
RecBole's ``init_logger`` writes the log file, so that bad input leaves no file behind. What is logged
meanwhile is kept and replayed into the log once it exists; if the run stops first, its warnings go to
stderr as they would have without any logging set up.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, List


class _Keep(logging.Handler):
    def __init__(self, records: List[logging.LogRecord]):
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def held_logs() -> Iterator[List[logging.LogRecord]]:
    """The records logged inside the block, for ``replay`` once logging is set up (``init_logger``, which
    sets nothing up while the root logger has a handler, so the block must end before it). Where logging is
    set up already (an earlier run in this process, pytest's capture) records go where they always go and
    none are kept."""
    root = logging.getLogger()
    records: List[logging.LogRecord] = []
    if root.handlers:
        yield records
        return
    keep, level = _Keep(records), root.level
    root.addHandler(keep)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    except BaseException:
        for record in records:
            if record.levelno >= logging.WARNING:
                logging.lastResort.handle(record)
        raise
    finally:
        root.removeHandler(keep)
        root.setLevel(level)


def replay(records: List[logging.LogRecord]) -> None:
    """Hand ``held_logs``' records to the handlers set up since, at the levels set up since."""
    for record in records:
        if logging.getLogger(record.name).isEnabledFor(record.levelno):
            logging.getLogger().handle(record)

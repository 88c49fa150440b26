"""Files written whole or not at all: a reader, or another process writing the same file, never sees half of one;
and a corrupt file moved aside."""
import os
from typing import Union


def write_whole(path: str, data: Union[str, bytes]) -> None:
    """Write ``data`` to a temporary file of this process's own, then move it onto ``path`` in one step."""
    tmp = f"{path}.tmp{os.getpid()}"  # per process: two processes may write the same file at once
    binary = isinstance(data, bytes)
    with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8", newline=None if binary else "") as f:
        f.write(data)
    os.replace(tmp, path)


def quarantine(path: str) -> None:
    """Move a corrupt file aside to ``*.corrupt`` (a DB with its WAL/shared-memory files, which would
    replay onto a fresh DB); the score cache and the optimizer's state file use it."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, path + ".corrupt" + suffix)

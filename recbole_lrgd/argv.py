"""RecBole's command line: the ``--key=value`` words of a run, checked before anything runs, and ``sys.argv`` while
RecBole's Config reads them (it reads its keys from ``sys.argv``, above a config dict and the YAML files)."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from recbole_lrgd.errors import LRGDError


def key_values(rest: Sequence[str]) -> Dict[str, str]:
    """The command line's config keys and their values as written. A word that is not ``--key=value`` is an
    error naming its flag: RecBole would drop it and run on the key's default. A key given twice keeps its
    last value, with a warning: RecBole would stop on it with a traceback."""
    values: Dict[str, str] = {}
    for i, arg in enumerate(rest):
        parts = arg[2:].split("=") if arg.startswith("--") else []
        if len(parts) != 2 or not parts[0]:
            raise LRGDError(_not_key_value(arg, rest[i - 1] if i else None, rest[i + 1] if i + 1 < len(rest) else None))
        key, value = parts
        if key in values and values[key] != value:
            print(f"warning: --{key} is given twice ({values[key]!r}, then {value!r}): the last one is used",
                  file=sys.stderr)
        values[key] = value
    return values


def recbole_arguments(rest: Sequence[str]) -> List[str]:
    """The command line's config keys, each once, as the ``--key=value`` words RecBole's Config reads."""
    return [f"--{key}={value}" for key, value in key_values(rest).items()]


def _not_key_value(arg: str, before: Optional[str], after: Optional[str]) -> str:
    """Why ``arg`` is no RecBole ``--key=value``, and the flag to write instead."""
    if arg.startswith("--") and "=" not in arg:
        value = after if after is not None and not after.startswith("-") else "<value>"
        return f"{arg} has no value: write {arg}={value} (RecBole keys are --key=value, one word)"
    if arg.startswith("--"):
        return f"{arg} has more than one '=': RecBole reads --key=value, one '=' (quote a value with '=' in a YAML file)"
    if before is not None and before.startswith("--") and "=" not in before:
        return f"{arg!r} is not a --key=value argument: write {before}={arg}"
    return f"{arg!r} is not a --key=value argument (RecBole keys are --key=value)"


@contextlib.contextmanager
def command_line(recbole_args: Sequence[str]) -> Iterator[None]:
    """``sys.argv`` holds just ``recbole_args`` (none: no key from the command line) while RecBole's Config reads
    its keys from it."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole-lrgd", *recbole_args]
    try:
        yield
    finally:
        sys.argv = saved


def run_script(main: Callable[[List[str]], Optional[int]]) -> None:
    """A script's ``main`` on its own flags, which are not RecBole's keys: ``sys.argv`` holds none of them while
    RecBole's Config reads it. Exits with what ``main`` returns."""
    flags = sys.argv[1:]
    with command_line([]):
        sys.exit(main(flags))

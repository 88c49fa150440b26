"""Multi-process helpers for ``accelerate launch`` (or ``torchrun``); no-ops in a plain single process.

Every function works without a launcher: world size 1, rank 0, ``shard`` returns everything,
``gather_objects`` returns ``[obj]``, ``barrier`` returns at once. Under a launcher (``WORLD_SIZE``
> 1 in the environment) ``init()`` starts the process group through accelerate's ``PartialState``:
gloo on CPU, nccl on CUDA.

Sharding is strided (rank r takes items r, r + W, r + 2W, ...) so it depends only on the item
order, the rank and the world size; ``map_sharded`` puts the gathered results back in the original
order, so every rank ends with the same list a single process would compute::

    from recbole_lrgd import distributed as dist
    dist.init()
    scores = dist.map_sharded(score_one, candidates)   # each rank scores 1/W of them; all get all
    if dist.is_main():
        write(scores)
    dist.barrier()
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def launched() -> bool:
    """True when a launcher started more than one process (``WORLD_SIZE`` > 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1
    return _env_int("WORLD_SIZE", default=1) > 1


def init() -> None:
    """Start the process group when launched with several processes (idempotent; no-op otherwise).

    Uses accelerate's ``PartialState``: gloo when CUDA is unavailable or ``--cpu`` was given,
    nccl on GPUs (where each rank also gets ``cuda:{local_rank}`` as its current device).
    """
    if not launched() or torch.distributed.is_initialized():
        return
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    PartialState(cpu=cpu, **({"backend": "gloo"} if cpu else {}))


def shutdown() -> None:
    """Destroy the process group this process started (no-op otherwise), so its backend's threads are
    joined before the interpreter exits: left to interpreter teardown, gloo can abort the process
    ("terminate called without an active exception") after a run that succeeded."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def leave(code: int) -> int:
    """``code`` in one process. Under a launcher: end the process with ``code`` once its exit handlers have run and
    its output is flushed, without the interpreter's teardown, where a backend's C++ thread can still abort a run
    that succeeded ("terminate called without an active exception"; ``shutdown`` makes it rarer, not impossible)."""
    if not launched():
        return code
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` without a launcher."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return _env_int("RANK", default=0), _env_int("WORLD_SIZE", default=1)


def local_rank() -> int:
    """This process's index on its machine (picks its GPU): 0 without a launcher."""
    return _env_int("LOCAL_RANK", default=0)


def local_world_size() -> int:
    """Processes on this machine: 1 without a launcher."""
    return _env_int("LOCAL_WORLD_SIZE", "WORLD_SIZE", default=1)


def is_main() -> bool:
    """True on rank 0 (the one process that logs and writes files)."""
    return world()[0] == 0


def _active() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if _active():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a file); the others run it after rank 0 has finished."""
    main = is_main()
    if not main:
        barrier()
    try:
        yield
    finally:
        if main:
            barrier()


def shard(seq: Sequence[T], rank: Optional[int] = None, world_size: Optional[int] = None) -> List[T]:
    """This rank's share of ``seq``: items ``rank, rank + W, rank + 2W, ...`` (all of it in one process)."""
    r, w = world()
    rank = r if rank is None else rank
    world_size = w if world_size is None else world_size
    return list(seq[rank::world_size])


def unshard(parts: Sequence[Sequence[T]]) -> List[T]:
    """Inverse of ``shard``: ``parts[r]`` is rank r's share; returns the items in the original order."""
    world_size = len(parts)
    total = sum(len(p) for p in parts)
    return [parts[i % world_size][i // world_size] for i in range(total)]


def gather_objects(obj: Any) -> List[Any]:
    """``obj`` from every rank, as a list indexed by rank (``[obj]`` in one process). Picklable objects only."""
    if not _active():
        return [obj]
    out: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in one process)."""
    if not _active():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def map_sharded(fn: Callable[[T], R], items: Sequence[T]) -> List[R]:
    """``[fn(x) for x in items]``, computed 1/W per rank and returned whole, in order, on every rank.

    Every rank must call it with the same ``items`` (same order); each calls ``fn`` only on its
    strided shard, then the results are all-gathered and interleaved back. ``fn``'s results must be
    picklable. In one process this is exactly the list comprehension. Results equal a single
    process's exactly when ``fn(x)`` depends on ``x`` alone (not on which items ran before it).
    """
    items = list(items)
    rank, world_size = world() if _active() else (0, 1)
    mine = [fn(x) for x in items[rank::world_size]]
    if world_size == 1:
        return mine
    return unshard(gather_objects(mine))


def device_for(device: Any) -> torch.device:
    """This rank's device for a configured one: a bare ``cuda`` becomes ``cuda:{local_rank}`` when launched."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched():
        return torch.device("cuda", local_rank())
    return device

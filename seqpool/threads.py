"""The one way seqpool limits CPU threads: a context that always restores what it changed.

torch's intra-op thread count is process-global state. A library that sets it and walks
away changes the speed of everything else in the caller's process, so every limit in
seqpool (``Encoder`` running batches one thread each, ``evaluate(threads=...)``, the CLI's
``--threads``) goes through :func:`limited_threads`.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from seqpool.errors import SeqpoolError


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's CPU set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def check_thread_count(count: int | None, name: str = "threads") -> int | None:
    """``count`` as an int >= 1 (``None`` stays ``None``); anything else is a user error naming ``name``."""
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int):
        raise SeqpoolError(f"{name} must be a whole number of threads, got {count!r}")
    if count < 1:
        raise SeqpoolError(f"{name} must be at least 1, got {count}")
    return count


@contextlib.contextmanager
def limited_threads(count: int | None, *, blas: bool = True) -> Iterator[None]:
    """Run the block with torch's intra-op threads (and, with ``blas``, numpy's BLAS / OpenMP
    pools via threadpoolctl) capped at ``count``; restore the previous values on exit.

    ``None`` leaves everything alone. ``blas=False`` is for hot paths entered many times
    (each encode call): threadpoolctl scans the loaded libraries on every entry, and torch's
    own kernels follow ``torch.set_num_threads`` anyway.
    """
    count = check_thread_count(count)
    if count is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        if blas:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=count):
                yield
        else:
            yield
    finally:
        torch.set_num_threads(previous)


_T = TypeVar("_T")
_R = TypeVar("_R")


def ordered_map(function: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``map(function, items)`` on ``workers`` threads, results in order, few in flight.

    At most ``2 * workers`` results wait at once, so memory stays bounded however many
    items there are; ``workers <= 1`` runs in the calling thread.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seqpool-encoder")
    pending: deque[Future[_R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

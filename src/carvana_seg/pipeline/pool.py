"""The one way stages run work in parallel processes, and fall back to the calling process when that is cheaper.

Starting a pool costs a fork and pickling per job: with one worker, or fewer jobs than ``min_jobs``, the stages
run in-process instead. Both sides offer the same ``map``/``imap``, so a stage never branches on the pool.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class Serial:
    """In-process stand-in for ``multiprocessing.Pool``: the same ``map`` and ``imap``, in order."""

    def map(self, fn: Callable, items: Iterable, chunksize: int = 1) -> list:  # noqa: ARG002
        return [fn(item) for item in items]

    def imap(self, fn: Callable, items: Iterable, chunksize: int = 1) -> Iterator[Any]:  # noqa: ARG002
        return (fn(item) for item in items)


@contextmanager
def worker_pool(
    workers: int, n_jobs: int | None = None, min_jobs: int = 2, context: str | None = None
) -> Iterator[Any]:
    """``min(workers, n_jobs)`` processes, or :class:`Serial` when that is one or there are fewer than ``min_jobs``
    jobs. Use as ``with worker_pool(w, len(jobs)) as pool: pool.map(fn, jobs)``. ``context`` is a
    ``multiprocessing`` start method (``"spawn"`` where forking a process with threads is unsafe; None: the
    platform's default)."""
    n = workers if n_jobs is None else min(workers, n_jobs)
    if n <= 1 or (n_jobs is not None and n_jobs < min_jobs):
        yield Serial()
        return
    with multiprocessing.get_context(context).Pool(n) as pool:
        yield pool

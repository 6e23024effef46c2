"""Admission control of the server: at most ``concurrency`` inferences at once, at most ``queue`` more waiting, and
every request beyond that answered at once with 503 and ``Retry-After`` instead of piling up memory and latency.

The inferences themselves run on a thread pool of ``concurrency`` workers (``run``), never on the event loop, so
``/healthz`` and ``/metrics`` answer while the models work."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Busy(Exception):
    """The queue is full: answer 503 with ``Retry-After: retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy: {retry_after} s")
        self.retry_after = retry_after


def default_concurrency(device_type: str, cores: int | None = None) -> int:
    """Inferences at once when ``--concurrency`` is not given: 2 on a GPU (one decodes while one runs), and on a
    CPU one per 4 cores (each inference's torch ops use the cores themselves), at least 1."""
    if device_type == "cuda":
        return 2
    return max(1, (cores or os.cpu_count() or 1) // 4)


class Gate:
    """The bounded queue in front of the inference pool."""

    def __init__(self, concurrency: int, queue: int) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError(f"concurrency must be >= 1 and queue >= 0, got {concurrency}, {queue}")
        self.concurrency, self.queue = concurrency, queue
        self.running = self.waiting = 0
        self._sem = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="infer")
        self._mean_s = 1.0  # running mean of one inference, for Retry-After

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for an inference slot; raise ``Busy`` when ``concurrency + queue`` requests are already in."""
        if self.running + self.waiting >= self.concurrency + self.queue:
            raise Busy(max(1, round(self._mean_s * (self.queue + 1) / self.concurrency)))
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the inference pool."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        finally:
            self._mean_s = 0.8 * self._mean_s + 0.2 * (loop.time() - t0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

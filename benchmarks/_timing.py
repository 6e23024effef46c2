"""Timing helper shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this imports as
``_timing``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


def per_item_ms(fn: Callable, items: Iterable, repeat: int = 3) -> float:
    """Milliseconds per item of ``fn(item)`` over ``items``: the best of ``repeat`` passes (least disturbed by
    others)."""
    items = list(items)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return best / len(items) * 1e3

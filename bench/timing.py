"""Wall-clock timing helpers shared by the suites: medians after warm-up, host-synchronised."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def time_calls(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` (which must block until its work is done), after ``warmup`` calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def interleaved_blocks(repeats: int, block: int) -> list[int]:
    """Sizes of the timed blocks that make up ``repeats`` measurements (last block may be short)."""
    if repeats < 1 or block < 1:
        raise ValueError(f"repeats and block must be >= 1, got {repeats} and {block}")
    sizes = [block] * (repeats // block)
    if repeats % block:
        sizes.append(repeats % block)
    return sizes

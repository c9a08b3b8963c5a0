"""Per-row progress of a benchmark suite on stderr: ``  train [2/4] resnet18: 41.3 s``, so a suite
that runs for minutes shows which row it is on (``launch.benchmark`` numbers the suites)."""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

Row = TypeVar("Row")


def rows(items: Iterable[Row], suite: str, label: Callable[[Row], str] = str) -> Iterator[Row]:
    """Yields each row; after a row's work (the loop body) prints its number, label and seconds."""
    items = list(items)
    for index, item in enumerate(items, 1):
        started = time.perf_counter()
        yield item
        print(f"  {suite} [{index}/{len(items)}] {label(item)}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

"""The registry of benchmark suites and ``--suite`` name resolution.

A suite is a module with ``run_suite(repeats: int | None) -> dict`` (its JSON section) and
``markdown_table(result) -> list[str]`` (its markdown rows, as docs/ shows them). A suite whose ``run_suite`` also takes
keyword ``tiny`` (seconds-sized shapes, for smoke tests) and ``machine`` (the machine section,
e.g. its peak FLOP/s) gets them. Modules are imported only when a suite runs, so a bad name is
rejected before jax starts. A new suite is one module + one line.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os

from archlab.bench import BenchmarkError

SUITES: dict[str, str] = {
    "train": "archlab.bench.train",
    "compile": "archlab.bench.compile",
    "parallel": "archlab.bench.parallel",
    "nas": "archlab.bench.nas",
    "infer": "archlab.bench.infer",
    "data": "archlab.bench.data",
}
ALL = "all"


def suite_names() -> list[str]:
    """Every valid ``--suite`` value: the suites, then ``all``."""
    return [*SUITES, ALL]


def select_suites(name: str) -> list[str]:
    """``"all"`` -> every suite; a suite name -> [it]; anything else -> BenchmarkError naming the valid ones."""
    if name == ALL:
        return list(SUITES)
    if name in SUITES:
        return [name]
    raise BenchmarkError(f"unknown suite {name!r}; valid suites: {', '.join(suite_names())}")


def suite_module(name: str):
    select_suites(name)
    return importlib.import_module(SUITES[name])


def supports_tiny(name: str) -> bool:
    """Whether suite ``name`` has a tiny (smoke-test) mode; imports only the suite's module."""
    return "tiny" in inspect.signature(suite_module(name).run_suite).parameters


def run_suite(name: str, repeats: int | None = None, *, tiny: bool = False, machine: dict | None = None) -> dict:
    run = suite_module(name).run_suite
    if "tiny" not in inspect.signature(run).parameters:
        if tiny:
            raise BenchmarkError(f"suite {name!r} has no tiny mode")
        return run(repeats)
    return run(repeats, tiny=tiny, machine=machine)


def markdown_table(name: str, result: dict) -> list[str]:
    return suite_module(name).markdown_table(result)


def check_profile_dir(directory: str) -> None:
    """``--profile=DIR`` must be a directory that can be created or written (checked before any suite runs)."""
    full = os.path.abspath(directory)
    if os.path.exists(full) and not os.path.isdir(full):
        raise BenchmarkError(f"--profile {directory!r} is a file; give a directory (e.g. runs/bench/tensorboard)")
    existing = full
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BenchmarkError(f"--profile {directory!r} is not writable")


def profiled(directory: str | None):
    """A ``jax.profiler`` trace of what runs inside into ``directory`` (``tensorboard --logdir DIR``,
    Profile tab); nothing when ``directory`` is empty."""
    if not directory:
        return contextlib.nullcontext()
    import jax

    return jax.profiler.trace(directory)

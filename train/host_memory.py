"""Host memory policy: keep freed CPU memory mapped so each train step reuses last step's pages.

XLA:CPU allocates a step's temporaries in one block (266 MB for the benchmark transformer) and
frees it when the step ends. glibc serves blocks that large with ``mmap`` and unmaps them on
``free``, so every step faults ~70,000 fresh zeroed pages back in: 0.13 s of kernel time per
step, a third of the transformer step's wall time on the 2-core benchmark machine
(docs/performance.md, round 4). The ``keep`` policy has glibc serve large blocks from its heap
(``M_MMAP_MAX`` 0), never give the heap's top back (``M_TRIM_THRESHOLD`` max) and use one arena
(``M_ARENA_MAX`` 1: other threads' arenas are mmap-ed heaps of at most 64 MB, which fall back to
``mmap`` for such blocks). Numerics are unchanged; the cost is that the process keeps its peak
host memory (resident size grows by the freed blocks it will reuse).

Applied when :mod:`train` is imported (``train/__init__.py``). The arena setting only reaches
threads that have not allocated yet, so it must happen before JAX starts its backend; importing
``train`` before the first JAX computation is enough. ``ARCHLAB_HOST_MEMORY=release`` leaves
glibc's defaults. Other C libraries (macOS, musl) have no such knobs: the policy is a no-op there.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

ENV_VAR = "ARCHLAB_HOST_MEMORY"
POLICIES = ("keep", "release")

# mallopt parameters (glibc malloc.h) and glibc's defaults for the two that are toggled.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_NEVER_TRIM = 2**31 - 1

_policy: str | None = None  # what this process runs under: "keep", "release" or "unavailable"


@functools.cache
def _glibc():
    """The process's C library when it is glibc (the only one with these mallopt knobs), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def requested_policy(environ=os.environ) -> str:
    """The policy ``ARCHLAB_HOST_MEMORY`` asks for (``keep`` when unset); ValueError names the valid ones."""
    value = environ.get(ENV_VAR, "keep").strip().lower() or "keep"
    if value not in POLICIES:
        raise ValueError(f"{ENV_VAR}={environ.get(ENV_VAR)!r} is not a host memory policy; valid: {', '.join(POLICIES)}")
    return value


def apply_policy(environ=os.environ) -> str:
    """Applies the requested policy once per process; returns the policy in force.

    ValueError (naming the valid policies) when ``ARCHLAB_HOST_MEMORY`` holds anything else.
    """
    global _policy
    if _policy is not None:
        return _policy
    wanted = requested_policy(environ)
    libc = _glibc()
    if libc is None:
        _policy = "unavailable"
    elif wanted == "keep":
        ok = libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
        _policy = "keep" if ok else "unavailable"
    else:
        _policy = "release"
    return _policy


def policy() -> str:
    """The policy in force: ``keep``, ``release`` or ``unavailable`` (not glibc)."""
    return apply_policy()


def set_freed_memory_kept(keep: bool) -> None:
    """Switches between keeping freed blocks and returning them to the OS (glibc's default), for A/B timing.

    Only under the ``keep`` policy (one arena): switching back to ``release`` restores glibc's mmap
    threshold behaviour and trims the heap, so the next allocations fault their pages in again.
    """
    libc = _glibc()
    if policy() != "keep" or libc is None:
        raise RuntimeError(f"host memory policy is {policy()!r}: switching needs the keep policy on glibc")
    if keep:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    else:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)

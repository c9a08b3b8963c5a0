"""XLA_FLAGS handling that must happen before jax is imported (so no jax import here)."""

from __future__ import annotations

import os
import re

_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def host_device_count(flags: str) -> int | None:
    """The fake CPU device count ``flags`` sets, or None when it sets none (the last one wins)."""
    found = _DEVICE_COUNT.findall(flags or "")
    return int(found[-1]) if found else None


def with_host_device_count(flags: str, count: int) -> str:
    """``flags`` plus ``--xla_force_host_platform_device_count=count``, unless a count is already set."""
    flags = (flags or "").strip()
    if host_device_count(flags) is not None:
        return flags
    return f"{flags} --xla_force_host_platform_device_count={count}".strip()


def ensure_host_devices(count: int, environ=os.environ) -> str:
    """Sets XLA_FLAGS in ``environ`` so the CPU backend has ``count`` devices; returns the flags.

    Has no effect once jax has initialised its backends: call it before ``import jax``.
    """
    environ["XLA_FLAGS"] = with_host_device_count(environ.get("XLA_FLAGS", ""), count)
    return environ["XLA_FLAGS"]

"""XLA_FLAGS handling that must happen before jax is imported (so no jax import here)."""

from __future__ import annotations

import os

from archlab.train.xla_flags import fake_device_count as host_device_count, relax_fake_device_collectives

__all__ = ["host_device_count", "with_host_device_count", "ensure_host_devices"]


def with_host_device_count(flags: str, count: int) -> str:
    """``flags`` plus ``--xla_force_host_platform_device_count=count``, unless a count is already set."""
    flags = (flags or "").strip()
    if host_device_count(flags) is not None:
        return flags
    return f"{flags} --xla_force_host_platform_device_count={count}".strip()


def ensure_host_devices(count: int, environ=os.environ) -> str:
    """Sets XLA_FLAGS in ``environ`` so the CPU backend has ``count`` devices (with the fake-device
    collective timeouts of train/xla_flags.py); returns the flags.

    Has no effect once jax has initialised its backends: call it before ``import jax``.
    """
    environ["XLA_FLAGS"] = with_host_device_count(environ.get("XLA_FLAGS", ""), count)
    return relax_fake_device_collectives(environ)

"""XLA_FLAGS for fake CPU devices: generous in-process collective timeouts (no jax import here).

With ``--xla_force_host_platform_device_count=N`` every fake device runs its share of a step on its
own thread, and an all-reduce waits until all N threads arrive. On a loaded machine (N threads on
2 cores next to other jobs) one of them can arrive late by tens of seconds, and XLA:CPU then kills
the process from C++ (``rendezvous.cc: Termination timeout for `all reduce ...` exceeded``, JAX
issue 31818). jaxlib 0.10 reads two flags for that wait: after
``--xla_cpu_collective_call_warn_stuck_timeout_seconds`` (default 20) it logs that a thread may be
stuck, and ``--xla_cpu_collective_call_terminate_timeout_seconds`` (default 40) later it aborts.
(``--xla_cpu_collective_timeout_seconds`` is the cross-process CPU collectives' timeout, not this
one.) :func:`relax_fake_device_collectives` raises both when fake devices are asked for; flags
already in XLA_FLAGS are kept. XLA aborts at start on a flag it does not know, so only these
names, checked against jaxlib 0.10.2, are ever added. Must run before jax is imported.
"""

from __future__ import annotations

import os
import re

# Seconds: a stuck warning after 1 minute, the abort 5 minutes after that (defaults: 20 s + 40 s).
COLLECTIVE_TIMEOUTS = {
    "xla_cpu_collective_call_warn_stuck_timeout_seconds": 60,
    "xla_cpu_collective_call_terminate_timeout_seconds": 300,
}

_DEVICE_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def fake_device_count(flags: str) -> int | None:
    """The fake CPU device count ``flags`` sets (the last one wins), or None."""
    found = _DEVICE_COUNT.findall(flags or "")
    return int(found[-1]) if found else None


def with_collective_timeouts(flags: str) -> str:
    """``flags`` plus each of :data:`COLLECTIVE_TIMEOUTS` that it does not set already."""
    flags = (flags or "").strip()
    for name, seconds in COLLECTIVE_TIMEOUTS.items():
        if not re.search(rf"--{name}(=|\s|$)", flags):
            flags = f"{flags} --{name}={seconds}".strip()
    return flags


def relax_fake_device_collectives(environ=os.environ) -> str:
    """Adds :data:`COLLECTIVE_TIMEOUTS` to ``environ["XLA_FLAGS"]`` when it asks for more than one
    fake CPU device (else leaves it alone); returns the flags."""
    flags = environ.get("XLA_FLAGS", "")
    if (fake_device_count(flags) or 0) > 1:
        environ["XLA_FLAGS"] = flags = with_collective_timeouts(flags)
    return flags

"""What the numbers were measured on: CPU, cores, jax versions, XLA flags, peak matmul FLOP/s."""

from __future__ import annotations

import os
import platform

from archlab.bench.timing import median, time_calls
from archlab.train import host_memory

PEAK_FLOPS_SIZES = (1024, 1536, 2048)


def cpu_name() -> str:
    """The "model name" line of /proc/cpuinfo, else ``platform.processor()``, else "unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def matmul_flops(n: int, *, repeats: int = 5, warmup: int = 2) -> dict:
    """Sustained float32 ``jnp.dot`` of two n x n matrices on the default device.

    Returns ``{"n", "median_s", "flops"}`` with flops = 2 n^3 / median seconds per product.
    """
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(n), 2)
    a = jax.random.normal(keys[0], (n, n), jnp.float32)
    b = jax.random.normal(keys[1], (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready((a, b))
    times = time_calls(lambda: dot(a, b).block_until_ready(), repeats=repeats, warmup=warmup)
    seconds = median(times)
    return {"n": n, "median_s": seconds, "flops": 2.0 * n**3 / seconds}


def peak_flops(sizes=PEAK_FLOPS_SIZES, *, repeats: int = 5, warmup: int = 2) -> dict:
    """The best per-size median FLOP/s over ``sizes``: ``{"flops", "n", "per_size": {n: flops}}``."""
    if not sizes:
        raise ValueError("peak_flops needs at least one matrix size")
    runs = [matmul_flops(n, repeats=repeats, warmup=warmup) for n in sizes]
    best = max(runs, key=lambda r: r["flops"])
    return {"flops": best["flops"], "n": best["n"], "per_size": {str(r["n"]): r["flops"] for r in runs}}


def machine_info(*, peak_sizes=PEAK_FLOPS_SIZES, peak_repeats: int = 5) -> dict:
    """The ``"machine"`` section of the benchmark JSON.

    Contract keys: cpu, cores, jax, jaxlib, xla_flags, peak_flops (best f32 matmul FLOP/s).
    Extra: peak_flops_n (the size that gave it), backend, device_count, load_average (the
    1-minute load before measuring: on a shared machine, other work skews every figure) and
    host_memory (the policy of train/host_memory.py the figures ran under).
    """
    import jax
    import jaxlib

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    peak = peak_flops(peak_sizes, repeats=peak_repeats)
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "peak_flops": peak["flops"],
        "peak_flops_n": peak["n"],
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "load_average": load,
        "host_memory": host_memory.policy(),
    }

"""Out-of-memory configs refused before work: the state's size from its abstract shapes (before
compiling), then XLA's memory analysis of the compiled step (before the first step).

The budget of a device is its allocator's ``bytes_limit`` (GPU/TPU ``memory_stats``); on the CPU
backend, whose devices share the host's memory, it is ``MemAvailable`` of /proc/meminfo split over
the local devices. Where neither is known nothing is refused, and an allocation failure during
the run is still reported in one line by the entry point (``is_out_of_memory``).
"""

from __future__ import annotations

import math

import jax

from archlab.train.errors import OutOfMemoryError


def device_budget_bytes(devices) -> int | None:
    """Bytes one of ``devices`` can hold, or None when the backend does not say."""
    device = devices[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        pass
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        available = _host_available_bytes()
        local = sum(1 for d in devices if d.process_index == jax.process_index()) or 1
        return available // local if available else None
    return None


def _host_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def state_bytes_per_device(abstract_state) -> int:
    """Bytes of the largest per-device share of ``abstract_state`` (ShapeDtypeStructs with shardings)."""
    per_device = 0
    for leaf in jax.tree.leaves(abstract_state):
        shape = leaf.shape
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and hasattr(sharding, "shard_shape"):
            shape = sharding.shard_shape(shape)
        per_device += math.prod(shape) * leaf.dtype.itemsize
    return per_device


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_state_fits(abstract_state, devices, what: str = "the train state") -> None:
    budget = device_budget_bytes(devices)
    need = state_bytes_per_device(abstract_state)
    if budget is not None and need > budget:
        raise OutOfMemoryError(
            f"{what} needs {_gib(need)} per device but a {devices[0].platform} device has {_gib(budget)}; "
            "shrink the model (model.*), shard it (parallel.mesh=fsdp:N or model:N) or use more devices"
        )


def check_compiled_fits(compiled, devices) -> None:
    """XLA's own count for the compiled step: arguments + outputs + temporaries - donated aliases."""
    budget = device_budget_bytes(devices)
    try:
        analysis = compiled.memory_analysis()
    except Exception:
        return
    if budget is None or analysis is None:
        return
    need = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes)
    if need > budget:
        raise OutOfMemoryError(
            f"the compiled train step needs {_gib(need)} per device (XLA memory analysis: temporaries "
            f"{_gib(analysis.temp_size_in_bytes)}) but a {devices[0].platform} device has {_gib(budget)}; "
            "lower train.batch_size, raise train.grad_accum_steps, set model.remat, or shard over more devices"
        )


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure raised by XLA or the host."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)

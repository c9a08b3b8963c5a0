"""Inference latency per backend: mean, std, p50, p95 and throughput after warm-up.

Each backend is a callable ``x -> outputs`` that returns host arrays (so the work is finished when
it returns). Records follow the benchmark JSON's ``infer`` layout:
``{"batch", "mean_ms", "std_ms", "p50_ms", "p95_ms", "throughput"}`` (throughput in examples/s).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def _record(times: list[float], batch: int) -> dict:
    ms = np.asarray(times) * 1e3
    return {"batch": batch, "mean_ms": float(ms.mean()), "std_ms": float(ms.std()), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "throughput": float(batch / (np.median(ms) / 1e3)), "repeats": len(times)}


def _timed_calls(run: Callable[[np.ndarray], object], x: np.ndarray, repeats: int, min_seconds: float = 0.0) -> list[float]:
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return times


def time_backend(run: Callable[[np.ndarray], object], x: np.ndarray, *, warmup: int = 5, repeats: int = 50,
                 min_seconds: float = 0.0) -> dict:
    """Times ``run(x)``: ``warmup`` untimed calls, then ``repeats`` timed ones (more until ``min_seconds``)."""
    for _ in range(warmup):
        run(x)
    return _record(_timed_calls(run, x, repeats, min_seconds), int(x.shape[0]))


def benchmark_backends(backends: dict[str, Callable], inputs: dict[int, np.ndarray], *, warmup: int = 20,
                       repeats: int = 200, rounds: int = 5) -> dict[str, dict]:
    """``{"<backend>@<batch>": record}`` for every backend and batch size.

    Per batch size, the backends take turns: ``rounds`` passes over all of them, each timing
    ``repeats / rounds`` calls, so a burst of load on a shared machine falls on every backend
    alike instead of on whichever ran during it.
    """
    results = {}
    for batch, x in inputs.items():
        for run in backends.values():
            for _ in range(warmup):
                run(x)
        times: dict[str, list[float]] = {name: [] for name in backends}
        turns = min(rounds, repeats)
        for turn in range(turns):
            for name, run in backends.items():
                times[name] += _timed_calls(run, x, repeats // turns + (turn < repeats % turns))
        for name in backends:
            results[f"{name}@{batch}"] = _record(times[name], int(x.shape[0]))
    return results


def latency_table(model_name: str, results: dict[str, dict], baseline: str = "jax_jit") -> list[str]:
    """A markdown table; ``vs jax`` is the baseline's median latency over this backend's at the same batch."""
    lines = [f"| {model_name} | batch | mean ms | std ms | p50 ms | p95 ms | examples/s | speed vs {baseline} |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        backend = key.rsplit("@", 1)[0]
        base = results.get(f"{baseline}@{r['batch']}")
        speed = f"{base['p50_ms'] / r['p50_ms']:.2f}x" if base else "-"
        lines.append(f"| {backend} | {r['batch']} | {r['mean_ms']:.3f} | {r['std_ms']:.3f} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} "
                     f"| {r['throughput']:,.0f} | {speed} |")
    return lines

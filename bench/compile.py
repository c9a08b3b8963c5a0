"""The ``compile`` suite: transformer train-step compile time against depth, scan over layers vs unrolled.

At each depth both variants are built by the training path (``train.compiled_run.Run``) and their train
step is lowered and compiled ahead of time (``Run.compile_train_step``: trace + lower + XLA
compile) from empty jax caches; variants alternate per depth. Reported per variant: seconds per
depth (median over ``repeats``), the least-squares slope in seconds per layer, and the
unrolled/scan ratios of the slopes and of the time at the deepest model.

Also measured: the *floor*, the 1-layer unrolled step. A scan step compiles one layer's
kernels plus the loop's plumbing, so it cannot compile faster than the 1-layer model, and
``unrolled at deepest / floor`` bounds the ratio any scan can reach on this jaxlib. XLA:CPU
compiles each distinct kernel once (identical layers share their kernels), so unrolled depth is
cheap here and the bound is low (docs/performance.md, round 5).
"""

from __future__ import annotations

import time

import jax

from archlab.bench import BenchmarkError, progress
from archlab.bench.timing import median
from archlab.bench.train import TINY_OVERRIDES, make_config
from archlab.train.compiled_run import Run

LAYERS = (2, 4, 8, 12)
VARIANTS = {"scan": "true", "unrolled": "false"}
DEFAULT_REPEATS = 1
TINY_LAYERS = (1, 2)
FLOOR_LAYERS = 1  # the 1-layer unrolled step: what no scan step can undercut


def slope(xs, ys) -> float:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    if n < 2:
        raise BenchmarkError(f"a slope needs at least 2 depths, got {list(xs)}")
    mx, my = sum(xs) / n, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def compile_seconds(layers: int, scan: bool, overrides: dict[str, str] | None = None) -> float:
    """Seconds to trace, lower and compile the transformer train step at ``layers`` layers."""
    values = {**(overrides or {}), "model.num_layers": str(layers), "model.scan_layers": VARIANTS["scan" if scan else "unrolled"]}
    run = Run(make_config("transformer", values))
    jax.clear_caches()
    started = time.perf_counter()
    run.compile_train_step()
    return time.perf_counter() - started


def measure(*, layers=LAYERS, overrides: dict[str, str] | None = None, repeats: int = DEFAULT_REPEATS) -> dict:
    """The ``"compile"`` section. ``overrides`` change the model shapes (default: the train suite's
    transformer, d_model 256, 4 heads, length 128, batch 16)."""
    layers = sorted(set(layers))
    if len(layers) < 2 or layers[0] < 1 or repeats < 1:
        raise BenchmarkError(f"the compile suite needs >= 2 depths >= 1 and repeats >= 1; got layers={layers}, repeats={repeats}")
    times = {variant: {depth: [] for depth in layers} for variant in VARIANTS}
    floor_times: list[float] = []
    for _ in progress.rows(range(repeats), "compile", lambda r: f"repeat {r + 1} (depths {', '.join(map(str, layers))}, both variants)"):
        if FLOOR_LAYERS not in layers:
            floor_times.append(compile_seconds(FLOOR_LAYERS, False, overrides))
        for i, depth in enumerate(layers):
            order = list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]
            for variant in order:
                times[variant][depth].append(compile_seconds(depth, variant == "scan", overrides))
    if FLOOR_LAYERS in layers:
        floor_times = times["unrolled"][FLOOR_LAYERS]
    floor = median(floor_times)
    result = {}
    for variant in VARIANTS:
        seconds = [median(times[variant][d]) for d in layers]
        result[variant] = {"layers": layers, "compile_s": seconds, "slope_s_per_layer": slope(layers, seconds),
                           "compile_s_all": [times[variant][d] for d in layers]}
    deepest = layers[-1]
    scan_slope = result["scan"]["slope_s_per_layer"]
    result.update({
        # None when scan's slope is <= 0 (flat in depth within noise): no finite ratio (and JSON has no inf)
        "unrolled_over_scan_slope": result["unrolled"]["slope_s_per_layer"] / scan_slope if scan_slope > 0 else None,
        "deepest": deepest,
        "unrolled_over_scan_at_deepest": result["unrolled"]["compile_s"][-1] / result["scan"]["compile_s"][-1],
        # the 1-layer unrolled step is the least any scan step can take; unrolled-at-deepest over it bounds the ratio
        "floor_one_layer_s": floor,
        "floor_one_layer_s_all": floor_times,
        "bound_unrolled_over_scan_at_deepest": result["unrolled"]["compile_s"][-1] / floor,
        "repeats": repeats,
        "measures": "Run.compile_train_step(): trace + lower + XLA compile of the train step, empty jax caches",
    })
    return result


def run_suite(repeats: int | None = None, *, tiny: bool = False, machine: dict | None = None) -> dict:
    """The suite as the CLI runs it (2/4/8/12 layers at the default benchmark shapes, or a tiny model)."""
    if tiny:
        return measure(layers=TINY_LAYERS, overrides=TINY_OVERRIDES["transformer"], repeats=repeats or 1)
    return measure(repeats=repeats or DEFAULT_REPEATS)


def markdown_table(result: dict) -> list[str]:
    """Markdown rows (docs/): compile seconds per depth for each variant, the slope and the ratio."""
    layers = result["scan"]["layers"]
    rows = [
        "| compile: transformer train step | " + " | ".join(f"{d} layers" for d in layers) + " | slope (s/layer) |",
        "|---|" + "---|" * (len(layers) + 1),
    ]
    for variant, label in (("unrolled", "unrolled (Python loop)"), ("scan", "scan over layers (nn.scan)")):
        r = result[variant]
        rows.append(f"| {label} | " + " | ".join(f"{s:.1f} s" for s in r["compile_s"]) + f" | {r['slope_s_per_layer']:.2f} |")
    rows.append("| unrolled / scan | " + " | ".join(
        f"{u / s:.1f}x" for u, s in zip(result["unrolled"]["compile_s"], result["scan"]["compile_s"])
    ) + (f" | {result['unrolled_over_scan_slope']:.1f}x |" if result["unrolled_over_scan_slope"] is not None else " | scan flat |"))
    bound = [""] * (len(layers) - 1) + [f"{result['bound_unrolled_over_scan_at_deepest']:.1f}x", ""]
    rows.append(f"| bound for any scan: unrolled / 1-layer unrolled ({result['floor_one_layer_s']:.1f} s) | " + " | ".join(bound) + " |")
    return rows

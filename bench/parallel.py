"""The ``parallel`` suite: the transformer train step sharded over 2 devices vs 1, same global batch.

Both runs are built with the project's own machinery (``train.compiled_run.Run``: config -> mesh ->
sharded init -> AOT-compiled, state-donating train step) and timed the way the training loop
runs: place the batch on the mesh, step, then wait for the state. Single and sharded steps are
measured in alternating blocks (A B B A A B ...) so slow drift in a shared machine's load hits
both sides alike; each figure is a median of per-step times.
"""

from __future__ import annotations

import time

import jax

from archlab.bench import BenchmarkError
from archlab.bench.timing import interleaved_blocks, median
from archlab.train.compiled_run import Run
from archlab.train.config import apply_overrides, get_config

MODEL = "transformer"
# The benchmark shapes: d_model 256, 4 layers, 4 heads, length 128, batch 16, bytes.
BENCHMARK_OVERRIDES = {
    "model.d_model": "256",
    "model.num_layers": "4",
    "model.num_heads": "4",
    "model.mlp_dim": "1024",
    "model.max_len": "128",
    "data.seq_len": "128",
    "train.batch_size": "16",
}
DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 3
DEFAULT_BLOCK = 5


def make_config(overrides: dict[str, str] | None, devices: int):
    """The benchmark config (``overrides`` on top of the benchmark shapes) on a ``data:devices`` mesh."""
    values = {**BENCHMARK_OVERRIDES, **(overrides or {})}
    values.update({"parallel.mesh": f"data:{devices}", "parallel.num_devices": str(devices)})
    return apply_overrides(get_config(MODEL), values)


class TimedRun:
    """One compiled train step with its own state and data, stepped and timed one step at a time."""

    def __init__(self, config, seed: int = 0):
        started = time.perf_counter()
        self.run = Run(config)
        self.state = self.run.init_state(seed)
        self.step_fn = self.run.compile_train_step()
        jax.block_until_ready(self.state)
        self.setup_s = time.perf_counter() - started
        self.batches = self.run.train_iterator()
        self.times: list[float] = []

    def step(self) -> float:
        """Seconds for one step: batch placement + train step + wait for the (donated, rebound) state."""
        host_batch = next(self.batches)  # host-side data is not what is being compared
        started = time.perf_counter()
        batch = self.run.place_batch(host_batch)
        self.state, metrics = self.step_fn(self.state, batch)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - started

    def steps(self, count: int, *, record: bool = True) -> None:
        for _ in range(count):
            seconds = self.step()
            if record:
                self.times.append(seconds)


def measure(
    *,
    overrides: dict[str, str] | None = None,
    devices: int = 2,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    block: int = DEFAULT_BLOCK,
    seed: int = 0,
) -> dict:
    """The ``"parallel"`` section of the benchmark JSON.

    ``overrides`` (``{"model.d_model": "32", ...}``) change the benchmark shapes, e.g. for a tiny
    test config. ``repeats`` timed steps per side after ``warmup`` untimed ones, in blocks of
    ``block`` alternating between the sides. Raises BenchmarkError with fewer than ``devices``
    devices (the CLI sets ``--xla_force_host_platform_device_count`` before importing jax).
    """
    if devices < 2:
        raise BenchmarkError(f"the parallel suite compares >= 2 devices with 1; got devices={devices}")
    available = jax.device_count()
    if available < devices:
        raise BenchmarkError(
            f"the parallel suite needs {devices} devices, found {available} {jax.default_backend()} device(s); "
            f"on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={devices} before jax is imported"
        )
    if warmup < 0:
        raise BenchmarkError(f"warmup must be >= 0, got {warmup}")
    blocks = interleaved_blocks(repeats, block)

    single, sharded = TimedRun(make_config(overrides, 1), seed), TimedRun(make_config(overrides, devices), seed)
    for side in (single, sharded):
        side.steps(warmup, record=False)
    for i, size in enumerate(blocks):
        order = (single, sharded) if i % 2 == 0 else (sharded, single)
        for side in order:
            side.steps(size)

    config = sharded.run.config  # as Run resolved it (model values read off the data)
    batch, seq_len = config.train.batch_size, config.data.seq_len
    single_s, sharded_s = median(single.times), median(sharded.times)
    model = config.model
    return {
        "sharded_over_single": sharded_s / single_s,
        "single_step_s": single_s,
        "sharded_step_s": sharded_s,
        "devices": devices,
        "mesh": f"data:{devices}",
        "global_batch": batch,
        "seq_len": seq_len,
        "single_tokens_per_s": batch * seq_len / single_s,
        "sharded_tokens_per_s": batch * seq_len / sharded_s,
        "single_step_s_min": min(single.times),
        "sharded_step_s_min": min(sharded.times),
        "single_setup_s": single.setup_s,
        "sharded_setup_s": sharded.setup_s,
        "repeats": repeats,
        "warmup": warmup,
        "block": block,
        "model": f"{MODEL} d_model {model.d_model}, {model.num_layers} layers, {model.num_heads} heads, mlp {model.mlp_dim}",
    }


def run_suite(repeats: int | None = None) -> dict:
    """The suite as the CLI runs it (benchmark shapes; ``repeats`` None = the default)."""
    return measure(repeats=DEFAULT_REPEATS if repeats is None else repeats)


def markdown_table(result: dict) -> list[str]:
    """Markdown rows (docs/): median step time, tokens/s and ratio for 1 device and the data-parallel mesh."""
    title = f"parallel: {result['model']}, global batch {result['global_batch']} x {result['seq_len']} bytes"
    return [
        f"| {title} | median step | tokens/s | step time vs 1 device |",
        "|---|---|---|---|",
        f"| 1 device (data:1) | {result['single_step_s'] * 1e3:.1f} ms | {result['single_tokens_per_s']:,.0f} | 1.00 |",
        f"| {result['devices']} devices ({result['mesh']}) | {result['sharded_step_s'] * 1e3:.1f} ms | "
        f"{result['sharded_tokens_per_s']:,.0f} | **{result['sharded_over_single']:.2f}** |",
    ]

"""The ``train`` suite: train-step time, throughput and MFU of the transformer, the CNN and ResNet-18.

Each model is built by the training path itself (``train.compiled_run.Run``: config -> data -> module ->
AOT-compiled, state-donating train step on one device) and stepped the way the loop steps it.
MFU = model FLOPs per second / the machine's peak f32 matmul FLOP/s. The peak is re-measured
*inside* the suite, in blocks alternating with the train-step blocks (``jnp.dot`` at the size
where ``machine.peak_flops`` found its best), so a shared machine's changing load hits the
numerator and the denominator alike; ``mfu_vs_machine_peak`` uses the machine section's figure.

Model FLOPs: the transformer's are counted by hand (:func:`transformer_train_flops`, the usual
6 * params * tokens plus causal attention); the CNN's and ResNet's are XLA's cost analysis of the
compiled train step (forward + backward + optimizer), as ``--summary`` reports them.
"""

from __future__ import annotations

import jax

from archlab.bench import BenchmarkError, progress
from archlab.bench.parallel import BENCHMARK_OVERRIDES, TimedRun
from archlab.bench.timing import interleaved_blocks, median
from archlab.train import host_memory
from archlab.train.config import apply_overrides, get_config

# The benchmark shapes (d_model 256, 4 layers, 4 heads, length 128, batch 16, bytes):
# the same ones the parallel suite times, defined there once.
TRANSFORMER_OVERRIDES = BENCHMARK_OVERRIDES
# Everything else at the registry's defaults (cnn: digits 16x16, batch 64; resnet18: 32x32, batch 64).
MODELS: dict[str, dict[str, str]] = {"transformer": TRANSFORMER_OVERRIDES, "cnn": {}, "resnet18": {}}
TINY_OVERRIDES: dict[str, dict[str, str]] = {
    "transformer": {"model.d_model": "32", "model.num_layers": "2", "model.num_heads": "2", "model.mlp_dim": "64",
                    "model.max_len": "32", "data.seq_len": "32", "train.batch_size": "8"},
    "cnn": {"train.batch_size": "8"},
}
TINY_MODELS = ("transformer", "cnn")  # ResNet-18's compile alone takes most of a minute: left out of the smoke run
DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 3
DEFAULT_BLOCK = 5
PEAK_CALLS_PER_BLOCK = 3
SETTLE_STEPS = 3  # untimed steps after switching the host memory policy back to keep


def transformer_train_flops(*, params: int, embedding_params: int, tied: bool, layers: int, d_model: int,
                            batch: int, length: int) -> float:
    """Model FLOPs of one transformer train step (forward + backward), counted by hand.

    ``6 * N * tokens``: every weight does one multiply-add (2 FLOPs) per token forward and two
    backward (gradients of input and weight), with N the parameters that take part in matmuls:
    all of them, less the input embedding table when it is not tied to the output projection (a
    gather is no matmul). Biases and LayerNorm scales are counted too (<0.2 % here; the usual
    convention). Plus causal attention: per layer QK^T and AV are 2 * B * T^2 * d_model FLOPs each
    over the full square; causal masking needs half of it, so 2 * B * T^2 * d forward, x3 for
    forward + backward: ``6 * layers * B * T^2 * d``. Rematerialisation is not counted (MFU, not HFU).
    """
    tokens = batch * length
    matmul_params = params if tied else params - embedding_params
    return 6.0 * matmul_params * tokens + 6.0 * layers * batch * length**2 * d_model


def xla_flops(compiled) -> float:
    """FLOPs XLA's cost analysis assigns a compiled program (nan when the backend gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", float("nan")))


def make_config(model: str, overrides: dict[str, str] | None = None):
    """``model``'s default config with the suite's shapes (``overrides`` on top), on one device."""
    values = {**MODELS.get(model, {}), **(overrides or {}), "parallel.mesh": "data:1", "parallel.num_devices": "1"}
    return apply_overrides(get_config(model), values)


def model_flops(run, compiled) -> tuple[float, str]:
    """(FLOPs of one train step, how they were counted) for the model ``run`` built."""
    import numpy as np

    xla = xla_flops(compiled)
    if run.config.model_name != "transformer":
        return xla, "XLA cost analysis of the compiled train step"
    model, params = run.config.model, run.abstract_state.params
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    flops = transformer_train_flops(
        params=count, embedding_params=model.vocab_size * model.d_model, tied=bool(model.tie_embeddings),
        layers=model.num_layers, d_model=model.d_model, batch=run.config.train.batch_size, length=run.config.data.seq_len,
    )
    return flops, "6 * params * tokens + 6 * layers * batch * length^2 * d_model (causal attention)"


def measure_model(model: str, *, overrides: dict[str, str] | None = None, peak_n: int = 1024, repeats: int = DEFAULT_REPEATS,
                  warmup: int = DEFAULT_WARMUP, block: int = DEFAULT_BLOCK, seed: int = 0) -> dict:
    """One model's ``"train"`` record: median step_s, tokens/s or examples/s, FLOPs and MFU.

    ``repeats`` timed steps after ``warmup`` untimed ones, in blocks of ``block`` that alternate
    with blocks of ``jnp.dot`` on ``peak_n`` x ``peak_n`` matrices (the in-suite peak).
    """
    import os

    import jax.numpy as jnp

    if warmup < 0:
        raise BenchmarkError(f"warmup must be >= 0, got {warmup}")
    blocks = interleaved_blocks(repeats, block)
    side = TimedRun(make_config(model, overrides), seed)
    flops, counted = model_flops(side.run, side.step_fn)
    a = jax.random.normal(jax.random.PRNGKey(1), (peak_n, peak_n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    dot_times = []

    def dot_block():
        import time

        for _ in range(PEAK_CALLS_PER_BLOCK):
            started = time.perf_counter()
            dot(a, a).block_until_ready()
            dot_times.append(time.perf_counter() - started)

    # The host memory policy's effect, measured in this process: blocks of steps with freed
    # memory returned to the OS (glibc's default) alternate with the kept blocks (train/host_memory.py).
    compare_memory = host_memory.policy() == "keep"
    released_times: list[float] = []
    side.steps(warmup, record=False)
    load_before = os.getloadavg()[0]
    for size in blocks:
        side.steps(size)
        dot_block()
        if compare_memory:
            host_memory.set_freed_memory_kept(False)
            try:
                side.step()  # settles the switch (this step's frees go back to the OS)
                released_times.extend(side.step() for _ in range(size))
            finally:
                host_memory.set_freed_memory_kept(True)
            side.steps(SETTLE_STEPS, record=False)  # the heap, trimmed by the switch, grows back over a step or two

    config = side.run.config
    step_s = median(side.times)
    peak = 2.0 * peak_n**3 / median(dot_times)
    record = {"step_s": step_s, "step_s_min": min(side.times)}
    batch = config.train.batch_size
    if model == "transformer":
        record["tokens_per_s"] = batch * config.data.seq_len / step_s
    record["examples_per_s"] = batch / step_s
    record.update({
        "mfu": flops / step_s / peak,
        "model_flops": flops,
        "model_flops_counted_as": counted,
        "xla_flops": xla_flops(side.step_fn),
        "flops_per_s": flops / step_s,
        "peak_flops_in_suite": peak,
        "peak_n": peak_n,
        "batch": batch,
        "setup_s": side.setup_s,
        "load_average": [load_before, os.getloadavg()[0]],  # 1-minute load before and after the timed blocks
        "host_memory": host_memory.policy(),
        "repeats": repeats,
        "warmup": warmup,
        "config": {k: config[k.split(".")[0]][k.split(".")[1]] for k in sorted(MODELS.get(model, {}) | (overrides or {}))},
    })
    if released_times:
        record["released_memory_step_s"] = median(released_times)
        record["released_over_kept"] = record["released_memory_step_s"] / step_s
    if model == "transformer":
        record["seq_len"] = config.data.seq_len
        m = config.model
        record["model"] = f"d_model {m.d_model}, {m.num_layers} layers, {m.num_heads} heads, mlp {m.mlp_dim}, length {config.data.seq_len}"
    return record


def measure(*, models=tuple(MODELS), tiny: bool = False, machine_peak: float | None = None, peak_n: int = 1024,
            repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP, block: int = DEFAULT_BLOCK) -> dict:
    """The ``"train"`` section: ``{model: record}``; ``tiny`` swaps in seconds-sized shapes (for tests)."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise BenchmarkError(f"unknown train-suite model(s) {unknown}; valid: {', '.join(MODELS)}")
    results = {}
    for model in progress.rows(models, "train"):
        record = measure_model(model, overrides=TINY_OVERRIDES.get(model) if tiny else None, peak_n=peak_n,
                               repeats=repeats, warmup=warmup, block=block)
        if machine_peak:
            record["mfu_vs_machine_peak"] = record["flops_per_s"] / machine_peak
        results[model] = record
    return results


def run_suite(repeats: int | None = None, *, tiny: bool = False, machine: dict | None = None) -> dict:
    """The suite as the CLI runs it (the default benchmark shapes unless ``tiny``; ``repeats`` None = the default)."""
    machine = machine or {}
    peak_n = 128 if tiny else int(machine.get("peak_flops_n") or 1024)
    default = 2 if tiny else DEFAULT_REPEATS
    return measure(models=TINY_MODELS if tiny else tuple(MODELS), tiny=tiny, machine_peak=machine.get("peak_flops"), peak_n=peak_n,
                   repeats=default if repeats is None else repeats, warmup=1 if tiny else DEFAULT_WARMUP,
                   block=1 if tiny else DEFAULT_BLOCK)


def markdown_table(result: dict) -> list[str]:
    """Markdown rows (docs/): one per model with step time, throughput, model FLOP/s and MFU."""
    rows = [
        "| train (f32, 1 device) | median step | throughput | model FLOP/s | MFU (vs in-suite peak) | step with freed host memory released (glibc default) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        shape = r.get("model", f"batch {r['batch']}")
        rate = f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else f"{r['examples_per_s']:,.0f} examples/s"
        released = (f"{r['released_memory_step_s'] * 1e3:.1f} ms ({r['released_over_kept']:.2f}x)" if "released_memory_step_s" in r
                    else f"not measured (policy: {r.get('host_memory', '?')})")
        rows.append(f"| {name} ({shape}) | {r['step_s'] * 1e3:.1f} ms | {rate} | {r['flops_per_s'] / 1e9:.1f} G | "
                    f"**{100 * r['mfu']:.0f} %** (peak {r['peak_flops_in_suite'] / 1e9:.0f} G) | {released} |")
    return rows

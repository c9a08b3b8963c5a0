"""The ``nas`` suite: P different cells trained as one vmap-ed population vs a Python loop of per-cell jits.

The workload: 16 distinct random NAS-Bench-201 cells (fixed seed), each trained
50 steps on digits 16x16 with batch 32, then evaluated on the validation split. Two ways:

- **vmap**: ``train_population`` (one jit: ``scan`` over steps of the whole population, then one
  population evaluation).
- **loop**: what a user would otherwise write: for each cell its own jitted step of
  ``member_logits`` (``lax.conv``, only its chosen ops), 50 steps, then a jitted evaluation.

*End to end* times each side from empty jax caches (``jax.clear_caches()``), so compilation counts:
the loop is ``train_member`` per cell, exactly the user's code. *Steady state* reuses the compiled
programs: the vmap side calls ``train_population`` again with the same shapes; the loop side
reuses one compiled step and evaluation per cell (built once, warmed up by a first pass). Both
sides time the same work (P x steps training steps + P evaluations) from the same initial params;
passes alternate (vmap, loop, loop, vmap, ...) so drift in a shared machine's load hits both alike,
and each figure is the median over the repeats.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from archlab.arch.nas_cell import CellNet, init_member, init_population, member_logits
from archlab.arch.search_space import NUM_ARCHITECTURES, index_to_genotype
from archlab.bench import BenchmarkError
from archlab.bench.timing import median
from archlab.train.nas.population import digits_data, make_member_step, train_member, train_population

POPULATION = 16
STEPS = 50
BATCH_SIZE = 32
IMAGE_SIZE = 16
CHANNELS = 16
SEED = 0
DEFAULT_REPEATS = 3


def random_distinct_codes(population: int, seed: int = SEED) -> np.ndarray:
    """``population`` distinct cells [P, 6] int32, drawn uniformly without replacement."""
    rng = np.random.default_rng(seed)
    return index_to_genotype(rng.choice(NUM_ARCHITECTURES, size=population, replace=False))


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - started, out


class MemberLoop:
    """The loop baseline with its compiled programs kept: one jitted step and evaluation per cell."""

    def __init__(self, codes: np.ndarray, *, batch_size: int):
        self.genotypes = [tuple(int(g) for g in code) for code in codes]
        self.steps = [make_member_step(g, batch_size=batch_size) for g in self.genotypes]
        self.evaluate = jax.jit(member_logits, static_argnums=1)

    def run(self, params: list[dict], rng: jax.Array, data, steps: int) -> list:
        """Trains every cell ``steps`` steps from ``params[m]`` and returns their validation accuracies
        (the same batches as ``train_population(codes, rng, ...)``)."""
        _, data_rng = jax.random.split(rng)
        accuracies = []
        for genotype, (step, tx), p in zip(self.genotypes, self.steps, params):
            opt = tx.init(p)
            for index in range(steps):
                p, opt, _ = step(p, opt, data_rng, index, data)
            logits = self.evaluate(p, genotype, data.val_images)
            accuracies.append((logits.argmax(-1) == data.val_labels).mean())
        return accuracies


def measure(
    *,
    population: int = POPULATION,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    image_size: int = IMAGE_SIZE,
    channels: int = CHANNELS,
    repeats: int = DEFAULT_REPEATS,
    seed: int = SEED,
) -> dict:
    """The ``"nas"`` section of the benchmark JSON (smaller arguments make a tiny test config).

    ``repeats``: timed steady-state passes per side (after the end-to-end pass, which doubles as
    the warm-up of the vmap side; the loop side gets one untimed warm-up pass).
    """
    if population < 1 or steps < 1 or repeats < 1:
        raise BenchmarkError(f"the nas suite needs population, steps and repeats >= 1; got {population}, {steps}, {repeats}")
    if image_size % 4:
        raise BenchmarkError(f"the nas suite's cell network pools to a 4x4 grid: image_size must be a multiple of 4, got {image_size}")
    net = CellNet(channels=channels)
    codes = random_distinct_codes(population, seed)
    data = digits_data(image_size)
    jax.block_until_ready(data)
    rng = jax.random.PRNGKey(seed)
    init_rng = jax.random.split(rng)[0]  # what train_population initialises from
    member_keys = jax.random.split(init_rng, population)  # member m of init_population(init_rng, P)

    # ---- end to end: empty caches, compile included; each side initialises its params itself
    jax.clear_caches()
    loop_e2e_s, loop_accuracy = _timed(lambda: [
        train_member(code, init_member(member_keys[m], net), rng, data, steps, batch_size=batch_size)["val_accuracy"]
        for m, code in enumerate(codes)
    ])
    jax.clear_caches()  # (the vmap side goes last, so its compiled program stays for the steady state)
    vmap_e2e_s, vmap_out = _timed(lambda: train_population(codes, rng, data, steps, net=net, batch_size=batch_size))
    # same params, batches and optimizer: both sides learn the same cells (to float rounding)
    accuracy_gap = float(np.max(np.abs(np.asarray(vmap_out["val_accuracy"]) - np.asarray(loop_accuracy))))

    # ---- steady state: compiled programs reused, same initial params on both sides
    params = init_population(init_rng, population, net)
    member_params = [jax.tree.map(lambda x, m=m: x[m], params) for m in range(population)]
    jax.block_until_ready(member_params)
    loop = MemberLoop(codes, batch_size=batch_size)
    loop.run(member_params, rng, data, steps)  # warm-up: compiles every cell's step and evaluation
    vmap_pass = lambda: train_population(codes, rng, data, steps, net=net, batch_size=batch_size, params=params)["val_accuracy"]
    loop_pass = lambda: loop.run(member_params, rng, data, steps)
    vmap_times, loop_times = [], []
    for i in range(repeats):
        order = ((vmap_times, vmap_pass), (loop_times, loop_pass))
        for times, fn in order if i % 2 == 0 else order[::-1]:
            times.append(_timed(fn)[0])
    vmap_s, loop_s = median(vmap_times), median(loop_times)
    member_steps = population * steps
    vmap_rate, loop_rate = member_steps / vmap_s, member_steps / loop_s
    return {
        "vmap_member_steps_per_s": vmap_rate,
        "loop_member_steps_per_s": loop_rate,
        "vmap_over_loop": vmap_rate / loop_rate,
        "end_to_end_speedup": loop_e2e_s / vmap_e2e_s,
        "vmap_end_to_end_s": vmap_e2e_s,
        "loop_end_to_end_s": loop_e2e_s,
        "vmap_steady_s": vmap_s,
        "loop_steady_s": loop_s,
        "vmap_compile_s": max(vmap_e2e_s - vmap_s, 0.0),  # end to end minus steady: trace + compile + init
        "loop_compile_s": max(loop_e2e_s - loop_s, 0.0),
        "vmap_steady_s_all": vmap_times,
        "loop_steady_s_all": loop_times,
        "vmap_ms_per_population_step": 1e3 * vmap_s / steps,
        "loop_ms_per_member_step": 1e3 * loop_s / member_steps,
        "max_val_accuracy_gap": accuracy_gap,
        "population": population,
        "steps": steps,
        "batch": batch_size,
        "image_size": image_size,
        "channels": channels,
        "repeats": repeats,
        "seed": seed,
        "steady_state_includes": "training steps and one validation evaluation per member, params pre-initialised",
    }


def run_suite(repeats: int | None = None) -> dict:
    """The suite as the CLI runs it (the default benchmark shapes; ``repeats`` None = the default)."""
    return measure(repeats=DEFAULT_REPEATS if repeats is None else repeats)


def markdown_table(result: dict) -> list[str]:
    """Markdown rows (docs/): end-to-end seconds (compile included), compile overhead, steady member-steps/s, ratios."""
    title = (f"nas: {result['population']} cells x {result['steps']} steps, digits {result['image_size']}x{result['image_size']}, "
             f"batch {result['batch']}, C={result['channels']}")
    return [
        f"| {title} | end to end (compile incl.) | compile | steady member-steps/s | end to end vs loop | steady vs loop |",
        "|---|---|---|---|---|---|",
        f"| Python loop, one jitted step per cell | {result['loop_end_to_end_s']:.1f} s | {result['loop_compile_s']:.1f} s | "
        f"{result['loop_member_steps_per_s']:,.0f} | 1.00 | 1.00 |",
        f"| vmap-ed population (one jit, scan over steps) | {result['vmap_end_to_end_s']:.1f} s | {result['vmap_compile_s']:.1f} s | "
        f"{result['vmap_member_steps_per_s']:,.0f} | **{result['end_to_end_speedup']:.2f}x** | **{result['vmap_over_loop']:.2f}x** |",
    ]

"""A NAS run in a workdir: config, search space, scorer, resumable search per (strategy, seed), outputs.

``run_strategies(config, strategies, workdir)`` runs each strategy for ``search.seeds`` seeds over
the space ``search.space`` names: ``cell`` (NAS-Bench-201 cells), ``dense`` (masked MLPs,
``config.dense``) or ``hparams`` (batch size, width, learning rate and weight decay of one fixed
cell, ``config.hparams``). Each run lives in ``WORKDIR/<strategy>/seed_<n>/`` with its search state
saved by orbax after every cycle (so the same command resumes exactly) and ``history.jsonl`` (one
row per evaluation: the member, score, cost, strategy, seed). The workdir gets ``best.json``,
``comparison.json`` and plots: best-so-far against evaluations per strategy, and for cells the
per-edge op frequencies of the final population. Cells are scored by training a vmap-ed population
(``train``), synflow (``synflow``) or a NAS-Bench-201-style table (``table``); the other spaces by
training (``train.nas.dense_population``, ``train.nas.hparam_population``).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from archlab.arch.nas_cell import CellNet
from archlab.arch.search_space import (
    NUM_EDGES,
    NUM_OPS,
    OPS,
    CellSpace,
    DenseSpace,
    GenotypeError,
    HyperparameterSpace,
    genotype_from_string,
    genotype_to_string,
    op_frequencies,
)
from archlab.train.atomic_write import write_jsonl_atomically
from archlab.train.config import ConfigError, convert_override
from archlab.train.errors import SearchError
from archlab.train.figures import new_figure
from archlab.train.nas.benchmark_table import TableError, load_table
from archlab.train.nas.dense_population import check_activations, train_dense_population
from archlab.train.nas.history import best_so_far
from archlab.train.nas.hparam_population import train_hyperparameters
from archlab.train.nas.population import PopulationMemoryError, check_chunk_fits, digits_data, train_population
from archlab.train.nas.search import init_search, run_search, summarize_best
from archlab.train.nas.search_config import SearchConfig, search_config
from archlab.train.nas.space_ops import num_codes
from archlab.train.nas.synflow import synflow_scores
from archlab.train.summary_writer import write_run_summary

SCORERS = ("train", "synflow", "table")
SPACES = ("cell", "dense", "hparams")
DEFAULT_HPARAMS_GENOTYPE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
COMPARED = ("evolution", "reinforce", "random")  # --strategy=all


def nas_config() -> ml_collections.ConfigDict:
    """The complete default config of ``python -m launch.nas`` (overridable as ``--config.X.Y=V``)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.search = ml_collections.ConfigDict({f.name: f.default for f in SearchConfig.__dataclass_fields__.values()})
    c.search.budget = 64
    c.search.population = 16
    c.search.seeds = 1  # runs per strategy; --strategy=all comparisons want 3 or more
    c.search.children_per_cycle = 8  # = scorer.chunk: each evolution cycle is one population program, no padding
    c.scorer = ml_collections.ConfigDict()
    c.scorer.kind = "train"  # train | synflow | table
    c.scorer.table = ""  # scorer.kind=table: a CSV/JSON of NAS-Bench-201 arch strings -> accuracy
    c.scorer.image_size = 16  # digits resized (train / synflow)
    c.scorer.channels = 16
    c.scorer.batch_size = 32
    c.scorer.learning_rate = 1e-2
    c.scorer.chunk = 8  # members trained together (lax.map over chunks in one program); calls are padded to a multiple
    c.scorer.devices = 1  # devices each chunk's members are split over (a "population" mesh axis; must divide scorer.chunk)
    c.search.space = "cell"  # cell | dense | hparams
    c.parallel = ml_collections.ConfigDict()  # multi-host: as launch.train (train.parallel.initialize_distributed)
    c.parallel.distributed = "auto"  # auto | off | explicit (--coordinator, --num_processes, --process_id)
    c.parallel.heartbeat_timeout_s = 30
    c.parallel.initialization_timeout_s = 120  # multi-host start-up: give up this long after a peer fails to join
    dense, hparams = DenseSpace(), HyperparameterSpace()
    c.dense = ml_collections.ConfigDict()  # search.space=dense: MLPs on flattened digits (scorer.batch_size, learning_rate)
    c.dense.max_depth = dense.max_depth
    c.dense.widths = dense.widths
    c.dense.activations = dense.activations
    c.dense.image_size = 8  # digits' own resolution: 64 inputs
    # search.space=hparams: a grid over one fixed cell's training; each member's batch size, width, learning rate and
    # weight decay replace scorer.batch_size, scorer.channels, scorer.learning_rate (and weight decay 0)
    c.hparams = ml_collections.ConfigDict()
    c.hparams.genotype = DEFAULT_HPARAMS_GENOTYPE
    c.hparams.learning_rates = hparams.learning_rates
    c.hparams.weight_decays = hparams.weight_decays
    c.hparams.batch_sizes = hparams.batch_sizes
    c.hparams.widths = hparams.widths
    return c


def apply_nas_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    for key, raw in overrides.items():
        section, _, field = key.rpartition(".")
        node = config[section] if section in config else None
        if node is None or not isinstance(node, ml_collections.ConfigDict) or field not in node:
            valid = [f"{s}.{k}" for s in ("search", "scorer", "dense", "hparams", "parallel") for k in sorted(config[s].keys())] + ["seed"]
            if key != "seed":
                raise SearchError(f"unknown config key config.{key}; valid: {', '.join(valid)}")
            config.seed = int(raw)
            continue
        try:
            node[field] = convert_override(key, raw, node[field])
        except ConfigError as e:
            raise SearchError(str(e)) from None
    validate_nas_config(config)
    return config


def validate_nas_config(config) -> None:
    try:
        search_config(config)
    except ValueError as e:
        raise SearchError(str(e)) from None
    for name in ("heartbeat_timeout_s", "initialization_timeout_s"):
        if config.parallel[name] < 1:
            raise SearchError(f"parallel.{name} must be >= 1 (got {config.parallel[name]})")
    s = config.scorer
    if s.kind not in SCORERS:
        raise SearchError(f"scorer.kind must be one of {', '.join(SCORERS)} (got {s.kind!r})")
    if s.kind == "table" and not s.table:
        raise SearchError("scorer.kind=table needs --config.scorer.table=PATH (a CSV/JSON of NAS-Bench-201 arch strings -> accuracy)")
    for name in ("image_size", "channels", "batch_size", "chunk", "devices"):
        if s[name] < 1:
            raise SearchError(f"scorer.{name} must be >= 1 (got {s[name]})")
    if s.chunk % s.devices:
        raise SearchError(f"scorer.devices={s.devices} must divide scorer.chunk={s.chunk} (each chunk's members are split evenly)")
    if s.devices > 1:
        if config.search.space == "dense" or s.kind != "train":
            raise SearchError(f"scorer.devices > 1 shards trained cell populations (search.space=cell|hparams, scorer.kind=train); "
                              f"got search.space={config.search.space}, scorer.kind={s.kind}")
    if s.image_size % 4:
        raise SearchError(f"scorer.image_size must be divisible by 4 (the head's 4x4 grid); got {s.image_size}")
    if s.learning_rate <= 0:
        raise SearchError(f"scorer.learning_rate must be > 0 (got {s.learning_rate})")
    space = config.search.space
    if space not in SPACES:
        raise SearchError(f"search.space must be one of {', '.join(SPACES)} (got {space!r})")
    if space != "cell" and s.kind != "train":
        raise SearchError(f"search.space={space} is scored by training (scorer.kind=train); scorer.kind={s.kind} scores cells only")
    make_space(config)  # the chosen space's own checks


def make_space(config):
    """The ``arch.search_space`` object ``search.space`` names, built from its config section; SearchError on bad values."""
    space = config.search.space
    if space == "cell":
        return CellSpace()
    if space == "dense":
        d = config.dense
        if d.max_depth < 1:
            raise SearchError(f"dense.max_depth must be >= 1 (got {d.max_depth})")
        if not d.widths or min(d.widths) < 1:
            raise SearchError(f"dense.widths must list at least one width, all >= 1 (got {tuple(d.widths)})")
        try:
            check_activations(tuple(d.activations))
        except ValueError as e:
            raise SearchError(f"dense.activations: {e}") from None
        if d.image_size < 1:
            raise SearchError(f"dense.image_size must be >= 1 (got {d.image_size})")
        return DenseSpace(max_depth=d.max_depth, widths=tuple(d.widths), activations=tuple(d.activations))
    h = config.hparams
    try:
        genotype_from_string(h.genotype)
    except GenotypeError as e:
        raise SearchError(f"bad hparams.genotype: {e}") from None
    try:
        return HyperparameterSpace(learning_rates=tuple(h.learning_rates), weight_decays=tuple(h.weight_decays),
                                   batch_sizes=tuple(h.batch_sizes), widths=tuple(h.widths))
    except ValueError as e:
        raise SearchError(f"hparams.{e}") from None


def describe_member(space, code) -> dict:
    """A history row's description of one member: ``genotype`` for cells, else ``member`` (words) and ``code``."""
    if isinstance(space, CellSpace):
        return {"genotype": genotype_to_string(code)}
    return {"member": space.describe(code), "code": [int(c) for c in code]}


def check_scorer_fits(config, data, *, members: int, batch_size: int, channels: int) -> None:
    """The population's own memory estimate (``train.nas.population.check_chunk_fits``) for one
    scorer chunk, as a SearchError naming the config keys to lower."""

    s = config.scorer
    try:
        check_chunk_fits(members, batch_size=batch_size, val_size=int(data.val_images.shape[0]), image_size=s.image_size,
                         channels=channels, devices=s.devices)
    except PopulationMemoryError as e:
        raise SearchError(f"{e} (--config.scorer.chunk, or the batch size / width)") from None


class Scorer:
    """``score_fn(codes, rng_seed) -> [P]`` for the configured space, plus what reports need (optimum when known)."""

    def __init__(self, config):
        s, self.kind, self.optimum = config.scorer, config.scorer.kind, None
        self.space_name, self.space = config.search.space, make_space(config)
        self.steps, self.chunk, self.batch, self.lr = config.search.steps_per_member, s.chunk, s.batch_size, s.learning_rate
        self.devices = s.devices
        if self.devices > jax.device_count():  # checked here, not in validate_nas_config: jax.distributed must start first
            raise SearchError(f"scorer.devices={self.devices} but {jax.device_count()} devices are visible "
                              f"(on CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
        if self.space_name == "dense":
            self.data = digits_data(config.dense.image_size)
            self.score_fn, self.unit = self._dense, f"val accuracy after {self.steps} steps"
            return
        if self.space_name == "hparams":
            h = self.space
            group = len(h.learning_rates) * len(h.weight_decays)  # the largest population one shape can have in a batch
            self.genotype = genotype_from_string(config.hparams.genotype)
            self.data = digits_data(s.image_size)
            check_scorer_fits(config, self.data, members=-(-group // s.chunk) * s.chunk, batch_size=max(h.batch_sizes),
                              channels=max(h.widths))
            self.score_fn, self.unit = self._hparams, f"val accuracy after {self.steps} steps"
            return
        if self.kind == "table":
            try:
                self.table = load_table(s.table)
            except TableError as e:
                raise SearchError(str(e)) from None
            self.optimum = float(self.table.optimum)
            self.score_fn, self.unit = self.table.score_fn, "table accuracy"
            return

        self.net = CellNet(channels=s.channels)
        self.data = digits_data(s.image_size)
        if self.kind == "train":
            check_scorer_fits(config, self.data, members=s.chunk, batch_size=s.batch_size, channels=s.channels)
        self.score_fn = self._train if self.kind == "train" else self._synflow
        self.unit = f"val accuracy after {self.steps} steps" if self.kind == "train" else "synflow score"

    def _chunks(self, codes):
        """Codes padded to whole chunks (repeats of the first row), so every call has one shape."""
        pad = -len(codes) % self.chunk
        padded = np.concatenate([codes, np.repeat(codes[:1], pad, axis=0)]) if pad else codes
        return [padded[i : i + self.chunk] for i in range(0, len(padded), self.chunk)]

    def _train(self, codes, rng_seed: int) -> np.ndarray:
        """One ``train_population`` program for the whole batch: ``scorer.chunk`` members at a time
        by ``lax.map`` inside it, each chunk split over ``scorer.devices`` devices."""

        codes = np.asarray(codes)
        padded = np.concatenate(self._chunks(codes))  # whole chunks: a batch size that recurs reuses its compiled program
        result = train_population(padded, jax.random.PRNGKey(rng_seed), self.data, self.steps, net=self.net,
                                  batch_size=self.batch, learning_rate=self.lr, chunk=self.chunk, devices=self.devices)
        return np.asarray(result["val_accuracy"])[: len(codes)] * 100.0

    def _dense(self, codes, rng_seed: int) -> np.ndarray:
        out = []
        for i, chunk in enumerate(self._chunks(np.asarray(codes))):
            result = train_dense_population(chunk, jax.random.fold_in(jax.random.PRNGKey(rng_seed), i), self.data, self.steps,
                                            space=self.space, batch_size=self.batch, learning_rate=self.lr)
            out.append(np.asarray(result["val_accuracy"]) * 100.0)
        return np.concatenate(out)[: len(codes)]

    def _hparams(self, codes, rng_seed: int) -> np.ndarray:
        result = train_hyperparameters(np.asarray(codes), jax.random.PRNGKey(rng_seed), self.data, self.steps, space=self.space,
                                       genotype=self.genotype, pad_to=self.chunk, devices=self.devices)
        return np.asarray(result["val_accuracy"]) * 100.0

    def _synflow(self, codes, rng_seed: int) -> np.ndarray:
        return np.concatenate([synflow_scores(c, jax.random.PRNGKey(rng_seed), net=self.net, image_size=self.data.train_images.shape[1]) for c in self._chunks(np.asarray(codes))])[: len(codes)]

    def best_fields(self, code) -> dict:
        """What best.json says about the best member: its description, and for hparams the values and the fixed cell."""
        fields = describe_member(self.space, code)
        if self.space_name == "hparams":
            h, code = self.space, [int(c) for c in code]
            fields["values"] = {"batch_size": h.batch_sizes[code[0]], "width": h.widths[code[1]],
                                "learning_rate": h.learning_rates[code[2]], "weight_decay": h.weight_decays[code[3]]}
            fields["genotype"] = genotype_to_string(self.genotype)
        return fields


# --------------------------------------------------------------------------------------- runs


def _checkpointer(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False))


def _history_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _space_settings(config: dict) -> dict:
    """``search.space`` and its config section, JSON-normalised (tuples as lists), from a config as a dict."""
    space = config.get("search", {}).get("space", "cell")  # workdirs written before search.space searched cells
    return json.loads(json.dumps({"space": space, "settings": config.get(space) if space != "cell" else None}))


def check_same_space(config, workdir: str) -> None:
    """Refuses to resume a workdir whose saved search is over another space or grid (its codes would not fit)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = _space_settings(json.load(f))
    if saved != _space_settings(config.to_dict()):
        raise SearchError(f"workdir {workdir} holds a search over search.space={saved['space']} with other settings; "
                          f"use another --workdir for this search.space={config.search.space} search")


def _writes_files() -> bool:
    """Process 0 writes history, config, best, comparison and plots (every process runs the same search)."""
    return jax.process_index() == 0


def search_progress(strategy: str, seed: int, target: int, done: int, scores, *, enabled: bool) -> tqdm:
    """A bar of cells scored out of ``target`` for one strategy and seed, with the best score so far and
    tqdm's ETA (process 0 only; ``enabled`` False for cluster logs)."""
    bar = tqdm(total=target, initial=done, desc=f"{strategy} seed {seed}", unit="cell", dynamic_ncols=True, mininterval=0.5,
               disable=not (enabled and _writes_files()), file=sys.stdout)
    if len(scores):
        bar.set_postfix(best=f"{np.nanmax(scores):.2f}")
    return bar


def run_one(strategy: str, seed: int, config, scorer: Scorer, workdir: str, *, max_cycles: int | None = None, echo=print,
            progress: bool = False):
    """One strategy, one seed, resumable: returns its final strategy state and trimmed History.
    ``progress``: a bar per member batch scored (cells scored, best so far, ETA)."""
    run_dir = os.path.join(os.path.abspath(workdir), strategy, f"seed_{seed}")
    os.makedirs(run_dir, exist_ok=True)
    history_path = os.path.join(run_dir, "history.jsonl")
    budget = config.search.budget
    manager = _checkpointer(os.path.join(run_dir, "checkpoints"))
    state, bar = None, None
    try:
        if manager.latest_step() is not None:
            target = init_search(strategy, scorer.space.num_choices, budget, config, seed)
            state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))
            state = jax.tree.map(np.asarray, state)
            echo(f"{strategy} seed {seed}: resuming after {int(state.history.count)} evaluations")
        rows = _history_rows(history_path)[: 0 if state is None else int(state.history.count)]
        if _writes_files():
            write_jsonl_atomically(history_path, rows)  # drop rows of a cycle whose checkpoint was never written
        cycle_start = [time.time()]
        target = min(budget, num_codes(scorer.space.num_choices)) if strategy == "grid" else budget
        bar = search_progress(strategy, seed, target, len(rows), [r["score"] for r in rows], enabled=progress)

        def hook(new_state, codes, scores):
            cost = (time.time() - cycle_start[0]) / max(len(scores), 1)
            rows.extend({**describe_member(scorer.space, c), "score": float(s), "cost_s": round(cost, 4), "strategy": strategy,
                         "seed": seed} for c, s in zip(codes, scores))
            if _writes_files():
                write_jsonl_atomically(history_path, rows)
            manager.save(len(rows), args=ocp.args.StandardSave(new_state), force=True)
            cycle_start[0] = time.time()
            bar.update(len(scores))
            bar.set_postfix(best=f"{max(r['score'] for r in rows):.2f}")

        state, history = run_search(strategy, scorer.score_fn, scorer.space.num_choices, budget, config, seed, state=state, hook=hook,
                                    max_cycles=max_cycles)
    finally:
        if bar is not None:
            bar.close()
        manager.close()
    return state, history


def run_strategies(config, strategies: list[str], workdir: str, *, max_cycles: int | None = None, echo=print,
                   progress: bool = False) -> dict:
    """Every strategy x seed (resuming any that stopped), then best.json, comparison.json and plots;
    ``progress`` shows a bar per strategy and seed."""
    workdir = os.path.abspath(workdir)  # orbax wants absolute paths; notebooks pass relative ones
    check_same_space(config, workdir)
    scorer = Scorer(config)
    os.makedirs(workdir, exist_ok=True)
    if _writes_files():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
    results, best_overall = {}, None
    for strategy in strategies:
        for seed in range(config.seed, config.seed + config.search.seeds):
            started = time.time()
            state, history = run_one(strategy, seed, config, scorer, workdir, max_cycles=max_cycles, echo=echo, progress=progress)
            codes, scores = history.filled
            if len(scores) < min(config.search.budget, num_codes(scorer.space.num_choices) if strategy == "grid" else config.search.budget):
                echo(f"{strategy} seed {seed}: stopped after {len(scores)} evaluations (max_cycles); run again to resume")
                continue
            top = int(np.nanargmax(scores))
            results.setdefault(strategy, []).append(dict(seed=seed, best=float(scores[top]), codes=codes, scores=scores, state=state))
            echo(f"{strategy} seed {seed}: best {scores[top]:.2f} ({scorer.unit}) {scorer.space.describe(codes[top])}, "
                 f"{len(scores)} evaluated in {time.time() - started:.1f}s")
            if best_overall is None or scores[top] > best_overall["score"]:
                best_overall = {**scorer.best_fields(codes[top]), "score": float(scores[top]), "strategy": strategy, "seed": seed,
                                "scorer": scorer.kind, "unit": scorer.unit, "space": scorer.space_name}
    if best_overall is None:
        return {"complete": False}
    comparison = summarize_best({k: [r["best"] for r in v] for k, v in results.items()}, scorer.optimum)
    if not _writes_files():  # processes > 0 of a multi-host search computed the same results; process 0 writes them
        return {"complete": True, "best": best_overall, "comparison": comparison, "plots": []}
    with open(os.path.join(workdir, "best.json"), "w") as f:
        json.dump(best_overall, f, indent=2)
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump({"scorer": scorer.kind, "optimum": scorer.optimum, "budget": config.search.budget, "strategies": comparison}, f, indent=2)
    plots = plot_search(results, os.path.join(workdir, "plots"), scorer.unit, op_frequency_plots=scorer.space_name == "cell")
    scalars = {"best_score": best_overall["score"], **{f"{name}_best_mean": row["best_mean"] for name, row in comparison.items()}}
    write_run_summary(workdir, config.to_dict(), step=config.search.budget, scalars=scalars, images=plots, prefix="nas")
    return {"complete": True, "best": best_overall, "comparison": comparison, "plots": plots}


def comparison_table(comparison: dict, optimum: float | None) -> list[str]:
    lines = ["| strategy | runs | best found (mean +- std) |" + (" regret (mean +- std) |" if optimum is not None else ""),
             "|---|---|---|" + ("---|" if optimum is not None else "")]
    for name, row in comparison.items():
        line = f"| {name} | {row['runs']} | {row['best_mean']:.2f} +- {row['best_std']:.2f} |"
        if optimum is not None:
            line += f" {row['regret_mean']:.2f} +- {row['regret_std']:.2f} |"
        lines.append(line)
    return lines


def plot_search(results: dict, out_dir: str, unit: str, *, op_frequency_plots: bool = True) -> list[str]:
    """best-so-far vs evaluations (mean over seeds per strategy) and (cells) the final population's per-edge op frequencies."""

    os.makedirs(out_dir, exist_ok=True)
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for strategy, runs in results.items():
        curves = [best_so_far(r["scores"]) for r in runs]
        n = min(len(c) for c in curves)
        mean = np.mean([c[:n] for c in curves], axis=0)
        ax.plot(np.arange(1, n + 1), mean, label=f"{strategy} ({len(curves)} seeds)")
    ax.set_xlabel("architectures evaluated")
    ax.set_ylabel(f"best so far: {unit}")
    ax.legend()
    fig.tight_layout()
    curve_path = os.path.join(out_dir, "best_so_far.png")
    fig.savefig(curve_path, dpi=100)

    paths = [curve_path]
    for strategy, runs in results.items() if op_frequency_plots else ():
        final = np.concatenate([_final_population(r) for r in runs])
        fig = new_figure(figsize=(6, 3.5))
        ax = fig.subplots()
        image = ax.imshow(op_frequencies(final), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(NUM_OPS), OPS, rotation=30, ha="right")
        ax.set_yticks(range(NUM_EDGES), [f"edge {e + 1}" for e in range(NUM_EDGES)])
        ax.set_title(f"{strategy}: op frequency per edge, final population")
        fig.colorbar(image)
        fig.tight_layout()
        path = os.path.join(out_dir, f"op_frequencies_{strategy}.png")
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def _final_population(run: dict) -> np.ndarray:
    state = run["state"]
    if hasattr(state, "born"):  # evolution: the living population
        return np.asarray(state.codes)
    return run["codes"][-min(len(run["codes"]), 20):]  # others: the last evaluations

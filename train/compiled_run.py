"""``Run``: a training run compiled from its config, everything built before the first step.

Named for what it holds (the run, built and compiled once), apart from ``train.loop``, which steps it.
Config -> data (a bad path fails before any compile) -> mesh, sharding rules and parallel mode
(``train.jit_mode`` or ``train.pmap``) -> module, optimizer, task (with a distillation teacher or a
transfer source where configured) -> the sharded abstract state -> the compiled train step and the
eval step. The loop, the benchmarks (``bench``) and tests build their steps here, so all of them
measure and run the same compiled program.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from archlab.arch import get_model_spec
from archlab.train import augment as augment_lib, data as data_lib, distill as distill_lib, parallel, regularize, transfer
from archlab.train.config import ConfigError
from archlab.train.data.tokenizer import tokenizer_for_config
from archlab.train.errors import TransferError
from archlab.train.jit_mode import JitMode
from archlab.train.optim import freeze, learning_rate_schedule, make_optimizer, prune as prune_lib
from archlab.train.pmap import PmapMode
from archlab.train.sampling import generate_text
from archlab.train.state import TrainState, abstract_train_state, eval_params, init_train_state, uses_ema
from archlab.train.step import make_eval_step, make_train_step
from archlab.train.tasks import get_task


def _add_trees(total, metrics):
    return jax.tree.map(jnp.add, total, metrics)


# Running metric sums on the device (the donated total is updated in place): no host sync per step.
accumulate_metrics = jax.jit(_add_trees, donate_argnums=0)


EVAL_CACHE_BYTES = 256 * 2**20

# parallel.mode -> the object that places state and batches and wraps the train step (one interface)
PARALLEL_MODES = {"jit": JitMode, "pmap": PmapMode}


class PlacedBatches:
    """Host batches placed on the mesh as they are iterated (a held-out split too large to keep on the devices)."""

    def __init__(self, batches, place):
        self.batches, self.place = batches, place

    def host_bytes(self) -> int:
        if not len(self.batches):
            return 0
        batch, weights = self.batches[0]
        return len(self.batches) * (sum(np.asarray(v).nbytes for v in jax.tree.leaves(batch)) + weights.nbytes)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (self.place(pair) for pair in self.batches)


def make_run_mesh(config: ml_collections.ConfigDict):
    """(mesh, logical rules, parallel mode: a JitMode or PmapMode) for ``config.parallel``; MeshError
    when the devices or the batch do not fit the mesh (``--dry_run`` checks this too)."""
    p = config.parallel
    mesh = parallel.make_mesh(p.mesh, p.num_devices)
    mode = PARALLEL_MODES[p.mode](mesh, parallel.parse_rules(p.rules, mesh), p)
    rules = mode.rules
    data_shards = parallel.data_shard_count(mesh, rules)
    micro = config.train.batch_size // config.train.grad_accum_steps
    if micro % data_shards:
        raise parallel.MeshError(
            f"micro-batch of {micro} (train.batch_size / train.grad_accum_steps) does not split over {data_shards} data shards "
            f"({jax.device_count()} devices visible, parallel.mesh={p.mesh}, parallel.num_devices={p.num_devices}): set "
            "--config.train.batch_size to a multiple of the shards, or use fewer devices with --config.parallel.num_devices=N "
            "or CUDA_VISIBLE_DEVICES"
        )
    return mesh, rules, mode


class Run:
    """Everything built from a config before the first step: data, mesh, module, steps, state."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.spec = get_model_spec(config.model_name)
        self.task = get_task(self.spec.task)
        # Data first: a bad data path fails before any compile.
        self.data = data_lib.make_dataset(self.spec.task, config, shard=jax.process_index(), num_shards=jax.process_count())
        if self.data.num_classes and "num_classes" in config.model and self.data.num_classes > config.model.num_classes:
            raise data_lib.DataError(
                f"the data has {self.data.num_classes} classes but model.num_classes={config.model.num_classes}; set --config.model.num_classes"
            )

        self.mesh, self.rules, self.mode = make_run_mesh(config)

        if self.spec.from_data is not None:
            updates = self.spec.from_data(config.model, self.data)
            if updates:
                config = ml_collections.ConfigDict(config.to_dict())
                config.model.update(updates)
                config.lock()
                self.config = config
        self.module = self.spec.make_module(config.model)
        self.decode_module = self.spec.make_module(config.model, decode=True)
        self.schedule = learning_rate_schedule(config.train)
        self.tx = make_optimizer(config.train, self.spec.param_groups)
        self.example_input = jnp.asarray(self.data.example_input)
        problem = augment_lib.check_inputs(config.train, self.example_input, self.spec.task)
        if problem:
            raise ConfigError(problem)
        # Distillation: the task the train step optimises also matches a frozen teacher's logits.
        self.train_task, self.teacher = distill_lib.from_config(config, self.task, self.data.example_input, self.spec.task)

        init = lambda rng: init_train_state(self.module, self.tx, self.example_input, rng, ema=uses_ema(config.train))
        with parallel.mesh_context(self.mesh, self.rules):
            boxed = abstract_train_state(self.module, self.tx, self.example_input, ema=uses_ema(config.train))
        self.sharding_notes: list[str] = []
        self.state_shardings = self.mode.state_shardings(boxed, self.sharding_notes)
        self.abstract_state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.meta.unbox(boxed), self.state_shardings
        )
        self._init = jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=self.state_shardings)
        self.init_source = transfer.load_source(config, self.abstract_state) if config.train.init_from else None
        if config.train.freeze_backbone and not freeze.has_head(self.abstract_state.params):
            raise TransferError(f"train.freeze_backbone: --model={config.model_name} has no '{freeze.HEAD}' module to train alone")
        example_batch = self.data.train.batch_at(0)
        self.batch_sharding = {k: parallel.batch_sharding(self.mesh, self.rules, ndim=v.ndim) for k, v in example_batch.items()}
        self._global_batch = {
            k: jax.ShapeDtypeStruct((config.train.batch_size,) + v.shape[1:], v.dtype, sharding=self.batch_sharding[k])
            for k, v in example_batch.items()
        }

        train_step = make_train_step(
            module=self.module, task=self.train_task, tx=self.tx, grad_accum_steps=config.train.grad_accum_steps, lr_schedule=self.schedule,
            cross_replica_mean=self.mode.cross_replica_mean(),
            regularizer=regularize.from_config(config.train), augment=augment_lib.from_config(config.train),
            ema_decay=config.train.get("ema_decay", 0.0),
        )
        self.train_step = train_step
        step_with_rng = lambda state, batch: train_step(state, batch, jax.random.fold_in(state.rng, state.step))
        self._wrapped_train_step = self.mode.wrap_train_step(step_with_rng, self.state_shardings, self.batch_sharding)
        eval_step = make_eval_step(module=self.module, task=self.task)
        self.jit_eval_step = jax.jit(eval_step)

    # --- state and batches in the parallel mode's layout (jit: global sharded arrays; pmap: stacked per device)

    def init_state(self, seed: int) -> TrainState:
        """A fresh state, created already sharded (never materialised whole on one device)."""
        with parallel.mesh_context(self.mesh, self.rules):
            state = self._init(jax.random.PRNGKey(seed))
            if self.init_source is not None:  # transfer: the source run's params, a fresh head where classes differ
                state = transfer.initialize_from(state, self.init_source)
        return self.to_layout(state)

    def to_layout(self, global_state: TrainState) -> TrainState:
        """A global (checkpoint-layout) state -> the layout the train step takes."""
        return self.mode.to_layout(global_state)

    def to_global(self, state: TrainState) -> TrainState:
        """The train step's layout -> the global state checkpoints, evaluation and plots use."""
        return self.mode.to_global(state)

    def place_batch(self, host_batch: dict):
        """This process's rows of the global batch -> device arrays the train step takes."""
        return self.mode.place_batch(host_batch, self.batch_sharding)

    def host_metrics(self, metrics) -> dict:
        """Per-step metric sums (replicated) -> host floats; a host sync, so only at log intervals."""
        return self.mode.host_metrics(metrics)

    def compile_train_step(self):
        """The train step ready to run: compiled ahead of time in jit mode (one compile, memory known
        before the loop); pmap compiles at the first call."""
        return self.mode.compile(self._wrapped_train_step, self.abstract_state, self._global_batch)

    def eval_metric_names(self) -> list[str]:
        """The names ``evaluate`` returns, read off the eval step's output shapes (nothing is compiled or run)."""
        batch, weights = self.data.eval_batches[0]
        shapes = jax.eval_shape(self.jit_eval_step, self.abstract_state.params, self.abstract_state.model_state, batch, weights)
        names = sorted(self.task.summarize(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)))
        return names + (["sparsity"] if self.config.train.sparsity > 0 else [])

    def startup_report(self) -> list[str]:
        params = jax.tree.map(lambda s: s, self.abstract_state.params)
        lines, warnings = parallel.sharding_report(
            params, self.state_shardings.params, self.mesh, replicated_warn_size=self.config.parallel.replicated_warn_size
        )
        lines.insert(2, f"mode: {self.mode.describe()}")
        if self.teacher is not None:
            t = self.config.train
            lines.append(f"teacher: {self.teacher.describe()}; distill_alpha {t.distill_alpha}, distill_temperature {t.distill_temperature}")
        if self.init_source is not None:
            lines.append(f"init_from: {self.init_source.describe()} (unless resuming this workdir's own checkpoint)")
        if self.config.train.freeze_backbone:
            trainable, total = transfer.trainable_count(self.abstract_state.params, frozen=True)
            lines.append(f"freeze_backbone: {trainable:,} of {total:,} params train (the head)")
        return lines + [f"note: {n}" for n in self.sharding_notes] + warnings

    def train_iterator(self) -> data_lib.TrainStream:
        return self.data.train

    def eval_batches(self, host_batches: data_lib.EvalBatches | None = None):
        """``host_batches`` (default: the held-out split's) on the mesh: rows split over the data
        shards where they divide, else replicated. Every process reads the whole held-out split and
        builds its shards. A split of up to ``EVAL_CACHE_BYTES`` is placed once and kept on the
        devices; a larger one is read and placed batch by batch at every evaluation."""
        def place(x):
            x = np.asarray(x)
            sharding = parallel.batch_sharding(self.mesh, self.rules, x.ndim)
            if x.ndim == 0 or x.shape[0] % parallel.data_shard_count(self.mesh, self.rules):
                sharding = parallel.replicated(self.mesh)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        batches = self.data.eval_batches if host_batches is None else host_batches
        placed = PlacedBatches(batches, lambda pair: (jax.tree.map(place, pair[0]), place(pair[1])))
        return list(placed) if placed.host_bytes() <= EVAL_CACHE_BYTES else placed

    def evaluate(self, state: TrainState, batches) -> dict:
        """Task metrics over ``batches`` of the EMA params where the run keeps them, else the params;
        ``state`` in the global layout (see ``to_global``)."""
        sums = None
        with parallel.mesh_context(self.mesh, self.rules):
            for batch, weights in batches:
                out = self.jit_eval_step(eval_params(state), state.model_state, batch, weights)
                sums = out if sums is None else accumulate_metrics(sums, out)
        result = self.task.summarize(parallel.gather_to_host(sums, self.mesh))
        if self.config.train.sparsity > 0:
            result["sparsity"] = prune_lib.measured_sparsity(state.params)
        return result

    def host_params(self, state: TrainState):
        """(params, model_state) whole on the host, the EMA params where kept (as export reads them).
        A collective: every process must call it."""
        return parallel.gather_to_host((eval_params(state), state.model_state), self.mesh)

    def plot(self, state: TrainState, workdir: str, step: int) -> list[str]:
        """The task's own figures (sample grids, rendered views) into ``workdir/plots``; process 0
        draws, every process takes part in gathering the params."""
        if self.task.plot is None:
            return []
        params, model_state = self.host_params(state)
        if jax.process_index() != 0:
            return []
        return self.task.plot(self.module, params, model_state, self.data, os.path.join(workdir, "plots"), step)

    def sample(self, state: TrainState, prompt: str, length: int, *, temperature: float, top_k: int, top_p: float = 0.0,
               seed: int = 0) -> str:
        """``length`` tokens after ``prompt``, encoded and decoded by the run's tokenizer (data.tokenizer)."""
        params, _ = self.host_params(state)
        return generate_text(
            self.decode_module, params, prompt, length, tokenizer=tokenizer_for_config(self.config.data),
            max_len=self.config.model.max_len, rng=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
            top_p=top_p,
        )

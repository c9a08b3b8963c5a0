"""The training loop around the pure steps: ``train_and_evaluate(config, workdir)``.

Pipeline order (one banner per stage): workdir + data checks, mesh, model + optimizer, sharded
init or checkpoint restore, compile, loop, final evaluation, plot and sample. The CLI, tests and
notebooks all call this one function; nothing here parses argv or exits the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from arch import get_model_spec
from train import data as data_lib
from train import parallel
from train.checkpoint import Checkpointer
from train.metrics import MetricWriter, plot_loss_curves, read_metrics
from train.sampling import generate
from train.state import TrainState, init_train_state, learning_rate_schedule, make_optimizer, param_count
from train.step import make_eval_step, make_train_step
from train.tasks import get_task
from train import augment as augment_lib, early_stopping, prune as prune_lib, regularize
from train import distill as distill_lib, transfer


class WorkdirError(ValueError):
    """A workdir that is a file or cannot be written."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; no checkpoint of it was written."""


# ----------------------------------------------------------------------------------- workdir


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` if needed and proves it writable, without touching its contents."""
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir!r} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise WorkdirError(f"workdir {workdir!r} is not writable ({e.strerror or e})") from None
    return workdir


def write_run_info(workdir: str, config: ml_collections.ConfigDict, extra: dict) -> None:
    info = {
        "config": config.to_dict(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "python": platform.python_version(),
        **extra,
    }
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=2, default=str)
    os.replace(tmp, os.path.join(workdir, "config.json"))


# ------------------------------------------------------------------------------------ signals


class StopRequest:
    """Set by SIGTERM (preemption) or a first Ctrl-C; the loop saves and returns at the next step.

    In a multi-process run the processes must stop at the same step or their next collective
    hangs, so there SIGTERM is left to JAX's preemption service and ``check(step)`` asks
    ``multihost_utils.reached_preemption_sync_point``, which agrees on one step across processes.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}
        self._multi_process = jax.process_count() > 1

    def __bool__(self):
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def check(self, step: int) -> bool:
        """Called once per step by every process; True when this step is where to stop."""
        if self._multi_process and self.signal_name is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = "a preemption notice (SIGTERM to a process)"
        return bool(self)

    @contextlib.contextmanager
    def installed(self):
        signals = () if self._multi_process else (signal.SIGTERM, signal.SIGINT)
        try:
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: run without handlers
            pass
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


# --------------------------------------------------------------------------------------- run


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

        p = config.parallel
        self.mesh = parallel.make_mesh(p.mesh, p.num_devices)
        self.rules = parallel.parse_rules(p.rules, self.mesh)
        self.pmap = None
        if p.mode == "pmap":
            if set(parallel.mesh_shape(self.mesh)) != {"data"}:
                raise parallel.MeshError(f"parallel.mode=pmap is data parallel only: use a data-only mesh such as data:-1 (got {p.mesh})")
            self.rules = (("batch", "data"),)
            self.pmap = parallel.PmapLayout(self.mesh)
        data_shards = parallel.data_shard_count(self.mesh, self.rules)
        micro = config.train.batch_size // config.train.grad_accum_steps
        if micro % data_shards:
            raise parallel.MeshError(
                f"micro-batch of {micro} (train.batch_size / train.grad_accum_steps) does not split over {data_shards} data shards"
            )

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
            from train.config import ConfigError

            raise ConfigError(problem)
        # Distillation: the task the train step optimises also matches a frozen teacher's logits.
        self.train_task, self.teacher = distill_lib.from_config(config, self.task, self.data.example_input, self.spec.task)

        init = lambda rng: init_train_state(self.module, self.tx, self.example_input, rng)
        with parallel.mesh_context(self.mesh, self.rules):
            boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
        self.sharding_notes: list[str] = []
        if self.pmap is None:
            self.state_shardings = parallel.logical_shardings(boxed, self.mesh, self.rules, self.sharding_notes)
        else:  # pmap replicates everything; checkpoints hold the same global replicated arrays as jit mode
            self.state_shardings = jax.tree.map(lambda _: parallel.replicated(self.mesh), nn.meta.unbox(boxed))
        self.abstract_state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.meta.unbox(boxed), self.state_shardings
        )
        self._init = jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=self.state_shardings)
        self.init_source = transfer.load_source(config, self.abstract_state) if config.train.init_from else None
        if config.train.freeze_backbone and not transfer.has_head(self.abstract_state.params):
            raise transfer.TransferError(f"train.freeze_backbone: --model={config.model_name} has no '{transfer.HEAD}' module to train alone")
        example_batch = self.data.train.batch_at(0)
        self.batch_sharding = {k: parallel.batch_sharding(self.mesh, self.rules, ndim=v.ndim) for k, v in example_batch.items()}
        self._global_batch = {
            k: jax.ShapeDtypeStruct((config.train.batch_size,) + v.shape[1:], v.dtype, sharding=self.batch_sharding[k])
            for k, v in example_batch.items()
        }

        train_step = make_train_step(
            module=self.module, task=self.train_task, tx=self.tx, grad_accum_steps=config.train.grad_accum_steps, lr_schedule=self.schedule,
            cross_replica_mean=None if self.pmap is None else (lambda tree: jax.lax.pmean(tree, parallel.PmapLayout.axis_name)),
            regularizer=regularize.from_config(config.train), augment=augment_lib.from_config(config.train),
        )
        self.train_step = train_step
        step_with_rng = lambda state, batch: train_step(state, batch, jax.random.fold_in(state.rng, state.step))
        if self.pmap is None:
            self._jit_train_step = jax.jit(
                step_with_rng,
                in_shardings=(self.state_shardings, self.batch_sharding),
                out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
                donate_argnums=0,
            )
        else:
            self._pmap_train_step = jax.pmap(
                step_with_rng, axis_name=parallel.PmapLayout.axis_name, devices=self.pmap.local_devices, donate_argnums=0
            )
        eval_step = make_eval_step(module=self.module, task=self.task)
        self._jit_eval_step = jax.jit(eval_step)

    # --- state and batches in the mode's layout (jit: global sharded arrays; pmap: stacked per device)

    def init_state(self, seed: int) -> TrainState:
        """A fresh state, created already sharded (never materialised whole on one device)."""
        with parallel.mesh_context(self.mesh, self.rules):
            state = self._init(jax.random.PRNGKey(seed))
            if self.init_source is not None:  # transfer: the source run's params, a fresh head where classes differ
                state = transfer.initialize_from(state, self.init_source)
        return self.to_layout(state)

    def to_layout(self, global_state: TrainState) -> TrainState:
        """A global (checkpoint-layout) state -> the layout the train step takes."""
        return global_state if self.pmap is None else self.pmap.to_stacked(global_state)

    def to_global(self, state: TrainState) -> TrainState:
        """The train step's layout -> the global state checkpoints, evaluation and plots use."""
        return state if self.pmap is None else self.pmap.to_global(state)

    def place_batch(self, host_batch: dict):
        """This process's rows of the global batch -> device arrays the train step takes."""
        if self.pmap is not None:
            return self.pmap.split_batch(host_batch)
        return jax.tree.map(parallel.put_batch, host_batch, self.batch_sharding)

    def host_metrics(self, metrics) -> dict:
        """Per-step metric sums (replicated) -> host floats; a host sync, so only at log intervals."""
        if self.pmap is not None:
            return {k: float(v) for k, v in self.pmap.first(metrics).items()}
        return {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}

    def compile_train_step(self):
        """Compiles the train step ahead of time (jit mode): one compile, memory known before the loop."""
        if self.pmap is not None:
            return self._pmap_train_step
        with parallel.mesh_context(self.mesh, self.rules):
            return self._jit_train_step.lower(self.abstract_state, self._global_batch).compile()

    def startup_report(self) -> list[str]:
        params = jax.tree.map(lambda s: s, self.abstract_state.params)
        lines, warnings = parallel.sharding_report(
            params, self.state_shardings.params, self.mesh, replicated_warn_size=self.config.parallel.replicated_warn_size
        )
        mode = "pmap (legacy data parallel: replicated params, pmean of gradients)" if self.pmap else f"jit, rules {self.config.parallel.rules}"
        lines.insert(2, f"mode: {mode}")
        if self.teacher is not None:
            t = self.config.train
            lines.append(f"teacher: {self.teacher.describe()}; distill_alpha {t.distill_alpha}, distill_temperature {t.distill_temperature}")
        if self.init_source is not None:
            lines.append(f"init_from: {self.init_source.describe()} (unless resuming this workdir's own checkpoint)")
        if self.config.train.freeze_backbone:
            trainable, total = transfer.trainable_count(self.abstract_state.params, frozen=True)
            lines.append(f"freeze_backbone: {trainable:,} of {total:,} params train (the head)")
        return lines + [f"note: {n}" for n in self.sharding_notes] + warnings

    def train_iterator(self) -> data_lib.PositionIterator:
        return self.data.train

    def eval_batches(self, host_batches: list | None = None) -> list[tuple[dict, jax.Array]]:
        """``host_batches`` (default: the held-out split's) on the mesh: rows split over the data
        shards where they divide, else replicated. Every process holds the whole held-out set, so
        each builds its shards."""

        def place(x):
            x = np.asarray(x)
            sharding = parallel.batch_sharding(self.mesh, self.rules, x.ndim)
            if x.ndim == 0 or x.shape[0] % parallel.data_shard_count(self.mesh, self.rules):
                sharding = parallel.replicated(self.mesh)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        batches = self.data.eval_batches if host_batches is None else host_batches
        return [(jax.tree.map(place, batch), place(weights)) for batch, weights in batches]

    def evaluate(self, state: TrainState, batches) -> dict:
        """Task metrics over ``batches``; ``state`` in the global layout (see ``to_global``)."""
        sums = None
        with parallel.mesh_context(self.mesh, self.rules):
            for batch, weights in batches:
                out = self._jit_eval_step(state.params, state.model_state, batch, weights)
                sums = out if sums is None else _accumulate_jit(sums, out)
        result = self.task.summarize(parallel.gather_to_host(sums, self.mesh))
        if self.config.train.sparsity > 0:
            result["sparsity"] = prune_lib.measured_sparsity(state.params)
        return result

    def host_params(self, state: TrainState):
        """(params, model_state) whole on the host. A collective: every process must call it."""
        return parallel.gather_to_host((state.params, state.model_state), self.mesh)

    def plot(self, state: TrainState, workdir: str, step: int) -> list[str]:
        """The task's own figures (sample grids, rendered views) into ``workdir/plots``; process 0
        draws, every process takes part in gathering the params."""
        if self.task.plot is None:
            return []
        params, model_state = self.host_params(state)
        if jax.process_index() != 0:
            return []
        return self.task.plot(self.module, params, model_state, self.data, os.path.join(workdir, "plots"), step)

    def sample(self, state: TrainState, prompt: bytes, length: int, *, temperature: float, top_k: int, seed: int = 0) -> bytes:
        params, _ = self.host_params(state)
        return generate(
            self.decode_module, params, prompt, length, max_len=self.config.model.max_len,
            rng=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
        )


def _check_stopping_metric(run: Run, metric: str) -> None:
    """train.early_stopping_metric must be one of the task's eval metrics, read off the eval step's
    output shapes (nothing is compiled or run)."""
    batch, weights = run.data.eval_batches[0]
    shapes = jax.eval_shape(run._jit_eval_step, run.abstract_state.params, run.abstract_state.model_state, batch, weights)
    names = sorted(run.task.summarize(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)))
    names += ["sparsity"] if run.config.train.sparsity > 0 else []
    if metric not in names:
        from train.config import ConfigError

        raise ConfigError(f"train.early_stopping_metric={metric!r} is not an eval metric of this model; valid: {', '.join(names)}")


def _accumulate(total, metrics):
    return jax.tree.map(jnp.add, total, metrics)


_accumulate_jit = jax.jit(_accumulate, donate_argnums=0)


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _host_scalar(x) -> int:
    return int(np.asarray(x.addressable_data(0)).reshape(-1)[0])


def _check_finite(state: TrainState) -> None:
    bad = _host_scalar(state.nonfinite_step)
    if bad >= 0:
        raise NonFiniteLossError(
            f"loss became non-finite at step {bad + 1}; stopped without writing a checkpoint of it (earlier checkpoints are intact)"
        )


def _score_test_split(run: Run, state: TrainState, step: int, best, say) -> tuple[dict, int, str]:
    """(metrics, step, "best state" | "last state") on the test split, for the state the validation
    split chose: early stopping's best (restored from ``WORKDIR/best``), else the last state."""
    test_state, test_step, which = state, step, "last state"
    directory = os.path.join(best.workdir, "checkpoints") if best is not None else ""
    if directory and os.path.isdir(directory):
        saved = Checkpointer(directory, keep=1)
        try:
            restored = saved.restore_latest(run.abstract_state, notify=say)
        finally:
            saved.close()
        if restored is not None:
            test_state, _, test_step = restored
            which = "best state"
    return run.evaluate(test_state, run.eval_batches(run.data.test_batches)), test_step, which


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_at_step: int | None = None,
    progress: bool = True,
    echo=print,
) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

    ``stop_at_step`` ends this invocation early after saving a checkpoint, as a preemption would
    (used by the kill-and-resume test). Returns a summary dict (final step, eval metrics, sample).
    """
    primary = jax.process_index() == 0
    say = echo if primary else (lambda *a, **k: None)
    started = time.time()

    # --- checks that must fail before any work
    workdir = check_workdir(workdir)
    run = Run(config)
    config = run.config  # with model values read off the data (ModelSpec.from_data)
    if config.train.early_stopping_metric:
        _check_stopping_metric(run, config.train.early_stopping_metric)
    t = config.train

    # --- state: restore the latest intact checkpoint, else init already sharded
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    restored = checkpointer.restore_latest(run.abstract_state, notify=say)
    iterator = run.train_iterator()
    if restored is None:
        state, start_step = run.init_state(config.seed), 0
    else:
        state, data_state, start_step = restored
        state = run.to_layout(state)
        iterator.set_state(data_state)
        say(f"resuming from step {start_step} in {checkpointer.directory}")
    stopping_rule = early_stopping.from_config(t)
    stopping = early_stopping.StoppingState.from_json(restored[1].get("early_stopping") if restored and stopping_rule else None)
    best = early_stopping.BestCheckpoint(workdir, resume_step=start_step) if stopping_rule else None

    def data_state() -> dict:  # the iterator's position, plus the early-stopping counters
        return {**iterator.get_state(), **({"early_stopping": stopping.to_json()} if stopping_rule else {})}

    n_params = param_count(run.abstract_state.params)
    if primary:
        write_run_info(workdir, config, {"param_count": n_params, "data_source": run.data.source,
                                         "example_input": {"shape": list(run.example_input.shape), "dtype": str(run.example_input.dtype)},
                                         "mesh": parallel.mesh_shape(run.mesh), "parallel_mode": config.parallel.mode})
    writer = MetricWriter(workdir, enabled=primary)
    writer.truncate_after(start_step)
    say(
        f"{config.model_name}: {n_params:,} params | data {run.data.source}: {run.data.description} | "
        f"{run.mesh.devices.size} {jax.default_backend()} device(s), mesh {parallel.mesh_shape(run.mesh)}"
    )
    for line in run.startup_report():
        say(line)

    # --- compile once, then loop
    compiled_step = run.compile_train_step()
    eval_batches = run.eval_batches()
    end_step = t.steps if stop_at_step is None else min(t.steps, stop_at_step)
    if stopping_rule is not None:
        if stopping.stopped:
            say(f"this run already stopped early at step {start_step}: {early_stopping.describe(stopping_rule, stopping)}")
            end_step = start_step
    stop = StopRequest()
    totals, window_start, window_time = None, start_step, time.time()
    last_saved = start_step if restored is not None else None
    step = start_step
    bar = tqdm(total=t.steps, initial=start_step, desc="train", unit="step", disable=not (progress and primary),
               dynamic_ncols=True, mininterval=0.5, file=sys.stdout)
    try:
        with stop.installed():
            while step < end_step and not stop:
                batch = run.place_batch(next(iterator))
                state, metrics = compiled_step(state, batch)
                totals = metrics if totals is None else _accumulate_jit(totals, metrics)
                step += 1
                bar.update(1)
                stop.check(step)

                if step % t.log_every == 0 or step == t.steps:
                    _check_finite(run.to_global(state))
                    count = step - window_start
                    host = {k: v / count for k, v in run.host_metrics(totals).items()}
                    host["steps_per_s"] = count / max(time.time() - window_time, 1e-9)
                    writer.write(step, "train", host)
                    bar.set_postfix(loss=f"{host['loss']:.3f}", refresh=False)
                    totals, window_start, window_time = None, step, time.time()
                if step % t.eval_every == 0 and step != t.steps:
                    result = run.evaluate(run.to_global(state), eval_batches)
                    writer.write(step, "eval", result)
                    run.plot(run.to_global(state), workdir, step)
                    if primary:
                        bar.write(f"step {step}: {run.data.held_out_name} " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
                    if stopping_rule is not None:
                        stopping, improved = early_stopping.update(stopping_rule, stopping, result[stopping_rule.metric], step)
                        if improved:
                            best.save(step, run.to_global(state), data_state())
                        elif stopping.stopped:
                            end_step = step  # this step's checkpoint is saved below, then the loop ends
                if step % config.checkpoint.every == 0 or step == end_step:
                    _check_finite(run.to_global(state))
                    checkpointer.save(step, run.to_global(state), data_state())
                    last_saved = step
            if stop and step != last_saved:
                _check_finite(run.to_global(state))
                checkpointer.save(step, run.to_global(state), data_state())
                last_saved = step
    finally:
        bar.close()
        checkpointer.close()
        if best is not None:
            best.close()

    summary = {"workdir": workdir, "step": step, "param_count": n_params, "train_seconds": time.time() - started}
    if stopping.stopped:
        say(f"{early_stopping.describe(stopping_rule, stopping)}; stopped at step {step} (of {t.steps}), best state kept in {best.workdir}")
        summary["early_stopping"] = dict(stopping.to_json(), metric=stopping_rule.metric, best_workdir=best.workdir)
    elif stop or step < t.steps:
        reason = f"received {stop.signal_name}" if stop else f"stop_at_step={stop_at_step}"
        say(f"{reason}: saved checkpoint at step {step} in {checkpointer.directory}; run the same command to resume")
        summary["interrupted"] = True
        writer.close()
        return summary

    # --- final evaluation, plot, sample
    state = run.to_global(state)
    result = run.evaluate(state, eval_batches)
    if not stopping.stopped:  # an early-stopped run was evaluated at its last step already
        writer.write(step, "eval", result)
    summary.update(eval=result, interrupted=False)
    if stopping_rule is not None and not stopping.stopped:
        stopping, improved = early_stopping.update(stopping_rule, stopping, result[stopping_rule.metric], step)
        if improved:
            best.save(step, state, data_state())
            best.close()
        summary["early_stopping"] = dict(stopping.to_json(), metric=stopping_rule.metric, best_workdir=best.workdir)
    test = None
    if run.data.test_batches is not None:  # the held-out split was a validation split: score the test split once
        test, test_step, which = _score_test_split(run, state, step, best, say)
        writer.write(test_step, "test", test)
        summary["test"] = dict(test, step=test_step, state=which)
    writer.close()
    if "sparsity" in result:
        say(f"sparsity {100 * result['sparsity']:.1f} % of prunable weights are zero; {prune_lib.nonzero_count(state.params):,} of {n_params:,} params nonzero")
    if primary:
        summary["plot"] = plot_loss_curves(
            read_metrics(writer.path), os.path.join(workdir, "plots", "loss.png"), title=f"{config.model_name} ({workdir})"
        )
    task_plots = run.plot(state, workdir, step)  # every process helps gather the params
    if primary:
        summary["task_plots"] = task_plots
    say(f"{run.data.held_out_name} at step {step}: {run.task.report(result)}; "
        f"{_format_duration(summary['train_seconds'])} in all")
    if test is not None:
        say(f"test at step {test_step} ({which}): {run.task.report(test)}")
    if run.spec.task == "lm":
        sample = run.sample(state, config.sample.prompt.encode("utf-8"), config.sample.length,
                            temperature=config.sample.temperature, top_k=config.sample.top_k, seed=config.seed)
        summary["sample"] = sample
        say(f"sample ({config.sample.length} bytes after {config.sample.prompt!r}):")
        say(config.sample.prompt + sample.decode("utf-8", errors="replace"))
    return summary

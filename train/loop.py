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
    """Set by SIGTERM (preemption) or a first Ctrl-C; the loop saves and returns at the next step."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __bool__(self):
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @contextlib.contextmanager
    def installed(self):
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
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

        self.mesh = parallel.make_mesh(config.parallel.mesh)
        self.rules = parallel.parse_rules(config.parallel.rules, self.mesh)
        data_shards = dict(zip(self.mesh.axis_names, self.mesh.devices.shape)).get(dict(self.rules).get("batch"), 1)
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

        init = lambda rng: init_train_state(self.module, self.tx, self.example_input, rng)
        with parallel.mesh_context(self.mesh, self.rules):
            boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
        self.state_shardings = parallel.logical_shardings(boxed, self.mesh, self.rules)
        self.abstract_state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.meta.unbox(boxed), self.state_shardings
        )
        self._init = jax.jit(lambda rng: nn.meta.unbox(init(rng)), out_shardings=self.state_shardings)
        example_batch = self.data.train.batch_at(0)
        self.batch_sharding = {k: parallel.batch_sharding(self.mesh, self.rules, ndim=v.ndim) for k, v in example_batch.items()}
        self._global_batch = {
            k: jax.ShapeDtypeStruct((config.train.batch_size,) + v.shape[1:], v.dtype, sharding=self.batch_sharding[k])
            for k, v in example_batch.items()
        }

        train_step = make_train_step(
            module=self.module, task=self.task, tx=self.tx, grad_accum_steps=config.train.grad_accum_steps, lr_schedule=self.schedule
        )
        self.train_step = train_step
        self._jit_train_step = jax.jit(
            lambda state, batch: train_step(state, batch, jax.random.fold_in(state.rng, state.step)),
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
            donate_argnums=0,
        )
        eval_step = make_eval_step(module=self.module, task=self.task)
        self._jit_eval_step = jax.jit(eval_step)

    def init_state(self, seed: int) -> TrainState:
        with parallel.mesh_context(self.mesh, self.rules):
            return self._init(jax.random.PRNGKey(seed))

    def compile_train_step(self):
        """Compiles the train step ahead of time: one compile, memory known before the loop."""
        with parallel.mesh_context(self.mesh, self.rules):
            return self._jit_train_step.lower(self.abstract_state, self._global_batch).compile()

    def train_iterator(self) -> data_lib.PositionIterator:
        return self.data.train

    def eval_batches(self) -> list[tuple[dict, jax.Array]]:
        return [(jax.tree.map(jnp.asarray, batch), jnp.asarray(weights)) for batch, weights in self.data.eval_batches]

    def evaluate(self, state: TrainState, batches) -> dict:
        sums = None
        with parallel.mesh_context(self.mesh, self.rules):
            for batch, weights in batches:
                out = self._jit_eval_step(state.params, state.model_state, batch, weights)
                sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        return self.task.summarize(jax.device_get(sums))

    def plot(self, state: TrainState, workdir: str, step: int) -> list[str]:
        """The task's own figures (sample grids, rendered views) into ``workdir/plots``."""
        if self.task.plot is None:
            return []
        params, model_state = jax.device_get((state.params, state.model_state))
        return self.task.plot(self.module, params, model_state, self.data, os.path.join(workdir, "plots"), step)

    def sample(self, state: TrainState, prompt: bytes, length: int, *, temperature: float, top_k: int, seed: int = 0) -> bytes:
        params = jax.device_get(state.params)
        return generate(
            self.decode_module, params, prompt, length, max_len=self.config.model.max_len,
            rng=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
        )


def _accumulate(total, metrics):
    return jax.tree.map(jnp.add, total, metrics)


_accumulate_jit = jax.jit(_accumulate, donate_argnums=0)


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _check_finite(state: TrainState) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        raise NonFiniteLossError(
            f"loss became non-finite at step {bad + 1}; stopped without writing a checkpoint of it (earlier checkpoints are intact)"
        )


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
    t = config.train

    # --- state: restore the latest intact checkpoint, else init already sharded
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    restored = checkpointer.restore_latest(run.abstract_state, notify=say)
    iterator = run.train_iterator()
    if restored is None:
        state, start_step = run.init_state(config.seed), 0
    else:
        state, data_state, start_step = restored
        iterator.set_state(data_state)
        say(f"resuming from step {start_step} in {checkpointer.directory}")

    n_params = param_count(state.params)
    write_run_info(workdir, config, {"param_count": n_params, "data_source": run.data.source,
                                     "example_input": {"shape": list(run.example_input.shape), "dtype": str(run.example_input.dtype)},
                                     "mesh": dict(zip(run.mesh.axis_names, map(int, run.mesh.devices.shape)))})
    writer = MetricWriter(workdir, enabled=primary)
    writer.truncate_after(start_step)
    say(
        f"{config.model_name}: {n_params:,} params | data {run.data.source}: {run.data.description} | "
        f"{jax.device_count()} {jax.default_backend()} device(s), mesh "
        f"{dict(zip(run.mesh.axis_names, map(int, run.mesh.devices.shape)))}"
    )

    # --- compile once, then loop
    compiled_step = run.compile_train_step()
    eval_batches = run.eval_batches()
    end_step = t.steps if stop_at_step is None else min(t.steps, stop_at_step)
    stop = StopRequest()
    totals, window_start, window_time = None, start_step, time.time()
    last_saved = start_step if restored is not None else None
    step = start_step
    bar = tqdm(total=t.steps, initial=start_step, desc="train", unit="step", disable=not (progress and primary),
               dynamic_ncols=True, mininterval=0.5, file=sys.stdout)
    try:
        with stop.installed():
            while step < end_step and not stop:
                batch = jax.tree.map(parallel.put_batch, next(iterator), run.batch_sharding)
                state, metrics = compiled_step(state, batch)
                totals = metrics if totals is None else _accumulate_jit(totals, metrics)
                step += 1
                bar.update(1)

                if step % t.log_every == 0 or step == t.steps:
                    _check_finite(state)
                    count = step - window_start
                    host = {k: float(v) / count for k, v in jax.device_get(totals).items()}
                    host["steps_per_s"] = count / max(time.time() - window_time, 1e-9)
                    writer.write(step, "train", host)
                    bar.set_postfix(loss=f"{host['loss']:.3f}", refresh=False)
                    totals, window_start, window_time = None, step, time.time()
                if step % t.eval_every == 0 and step != t.steps:
                    result = run.evaluate(state, eval_batches)
                    writer.write(step, "eval", result)
                    if primary:
                        run.plot(state, workdir, step)
                    bar.write(f"step {step}: {run.data.held_out_name} " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
                if step % config.checkpoint.every == 0 or step == end_step:
                    _check_finite(state)
                    checkpointer.save(step, state, iterator.get_state())
                    last_saved = step
            if stop and step != last_saved:
                _check_finite(state)
                checkpointer.save(step, state, iterator.get_state())
                last_saved = step
    finally:
        bar.close()
        checkpointer.close()

    summary = {"workdir": workdir, "step": step, "param_count": n_params, "train_seconds": time.time() - started}
    if stop or step < t.steps:
        reason = f"received {stop.signal_name}" if stop else f"stop_at_step={stop_at_step}"
        say(f"{reason}: saved checkpoint at step {step} in {checkpointer.directory}; run the same command to resume")
        summary["interrupted"] = True
        writer.close()
        return summary

    # --- final evaluation, plot, sample
    result = run.evaluate(state, eval_batches)
    writer.write(step, "eval", result)
    writer.close()
    summary.update(eval=result, interrupted=False)
    if primary:
        summary["plot"] = plot_loss_curves(
            read_metrics(writer.path), os.path.join(workdir, "plots", "loss.png"), title=f"{config.model_name} ({workdir})"
        )
        summary["task_plots"] = run.plot(state, workdir, step)
    say(f"{run.data.held_out_name} at step {step}: {run.task.report(result)}; "
        f"{_format_duration(summary['train_seconds'])} in all")
    if run.spec.task == "lm":
        sample = run.sample(state, config.sample.prompt.encode("utf-8"), config.sample.length,
                            temperature=config.sample.temperature, top_k=config.sample.top_k, seed=config.seed)
        summary["sample"] = sample
        say(f"sample ({config.sample.length} bytes after {config.sample.prompt!r}):")
        say(config.sample.prompt + sample.decode("utf-8", errors="replace"))
    return summary

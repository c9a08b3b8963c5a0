"""The training loop around the pure steps: ``train_and_evaluate(config, workdir)``.

Pipeline order (one banner per stage): workdir + data checks, mesh, model + optimizer, sharded
init or checkpoint restore, compile, loop, final evaluation, plot and sample. The CLI, tests and
notebooks all call this one function; nothing here parses argv or exits the process. What is
built from the config before the first step (data, mesh, module, compiled steps) is
``train.run.Run``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import tempfile
import time

import jax
import jaxlib
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from archlab.train import early_stopping, memory_budget, parallel
from archlab.train.atomic_write import write_json_atomically
from archlab.train.checkpoint import Checkpointer, first_nonfinite_leaf, probe_checkpoint_dir
from archlab.train.config import ConfigError, resolve_config
from archlab.train.errors import NonFiniteLossError, WorkdirError
from archlab.train.metrics import MetricWriter, plot_loss_curves, read_metrics
from archlab.train.optim import prune as prune_lib
from archlab.train.profiling import ProfileWindow
from archlab.train.run import Run, accumulate_metrics
from archlab.train.state import TrainState, param_count
from archlab.train.train_log import LOGGER as train_logger, train_line
from archlab.train.workdir_lock import WorkdirLock, WorkdirLockedError


class Interrupted(RuntimeError):
    """SIGTERM/Ctrl-C arrived outside the training loop (start-up or the final evaluation); every
    checkpoint written so far is intact and the same command resumes."""


# ----------------------------------------------------------------------------------- workdir


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` if needed and proves it writable, without touching its contents."""
    if not workdir or not workdir.strip():
        raise WorkdirError("workdir is empty; give a directory")
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
    write_json_atomically(os.path.join(workdir, "config.json"), info, indent=2, default=str)


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

    def raise_if_stopped(self, where: str) -> None:
        """At a stage boundary outside the loop: a pending SIGTERM/Ctrl-C ends the run here."""
        if self.signal_name is not None:
            raise Interrupted(f"received {self.signal_name} {where}")

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


def _check_stopping_metric(run: Run, metric: str) -> None:
    """train.early_stopping_metric must be one of the task's eval metrics, read off the eval step's
    output shapes (nothing is compiled or run)."""
    batch, weights = run.data.eval_batches[0]
    shapes = jax.eval_shape(run.jit_eval_step, run.abstract_state.params, run.abstract_state.model_state, batch, weights)
    names = sorted(run.task.summarize(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)))
    names += ["sparsity"] if run.config.train.sparsity > 0 else []
    if metric not in names:
        raise ConfigError(f"train.early_stopping_metric={metric!r} is not an eval metric of this model; valid: {', '.join(names)}")


def _format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _host_scalar(x) -> int:
    return int(np.asarray(x.addressable_data(0)).reshape(-1)[0])


def _check_finite(state: TrainState, step: int) -> None:
    """At log and checkpoint points: the state itself (a NaN learning rate or weight decay makes NaN
    params from a finite loss and gradient), then the steps' own flag (loss, gradient)."""
    leaf = first_nonfinite_leaf({"params": state.params, "opt_state": state.opt_state, "model_state": state.model_state})
    if leaf is not None:
        raise NonFiniteLossError(
            f"{leaf} became non-finite by step {step}; stopped without writing a checkpoint of it "
            "(earlier checkpoints are intact; check train.learning_rate, train.weight_decay and the data)"
        )
    bad = _host_scalar(state.nonfinite_step)
    if bad >= 0:
        raise NonFiniteLossError(
            f"loss became non-finite at step {bad + 1}; stopped without writing a checkpoint of it (earlier checkpoints are intact)"
        )


def _guard_history(workdir: str, restart: bool, say) -> None:
    """A workdir whose metrics.jsonl logged an earlier run but which has no checkpoint is never
    silently started over. (A config.json alone, from a run stopped before it logged a step, holds
    no history: it is rewritten.)"""
    metrics = os.path.join(workdir, "metrics.jsonl")
    if not (os.path.isfile(metrics) and read_metrics(metrics)):
        return
    if not restart:
        raise WorkdirError(
            f"{workdir} holds an earlier run's metrics.jsonl but no checkpoint to resume; refusing to start over "
            "and overwrite its history: pass --restart to train from step 0 (the old metrics.jsonl is kept aside), or use another --workdir"
        )
    if jax.process_index() == 0:
        kept = os.path.join(workdir, time.strftime("metrics.before-restart-%Y%m%d-%H%M%S.jsonl"))
        os.replace(metrics, kept)
        say(f"--restart: training from step 0; the earlier metrics are kept in {kept}")


def _resume_hint(restored) -> str:
    return f"the latest checkpoint is step {restored[2]}" if restored is not None else "no checkpoint was written yet"


def _close_after_failure(checkpointer: Checkpointer, best) -> None:
    """Closes the checkpointers while another error is on its way out: theirs must not replace it."""
    for closable in (checkpointer, best):
        if closable is not None:
            with contextlib.suppress(Exception):
                closable.close()


def _logged(path: str, step: int, split: str) -> bool:
    return os.path.isfile(path) and any(r.get("step") == step and r.get("split") == split for r in read_metrics(path))


def _score_test_split(run: Run, state: TrainState, step: int, best, say) -> tuple[dict, int, str]:
    """(metrics, step, "best state" | "last state") on the test split, for the state the validation
    split chose: early stopping's best (restored from ``WORKDIR/best``), else the last state."""
    test_state, test_step, which = state, step, "last state"
    directory = os.path.join(best.workdir, "checkpoints") if best is not None else ""
    if directory and os.path.isdir(directory):
        saved = Checkpointer(directory, keep=1, read_only=True)
        try:
            restored = saved.restore_latest(run.abstract_state, notify=say)
        finally:
            saved.close()
        if restored is not None:
            test_state, _, test_step = restored
            which = "best state"
    return run.evaluate(test_state, run.eval_batches(run.data.test_batches)), test_step, which


def _ema_note(config) -> str:
    return " (EMA params)" if config.train.get("ema_decay", 0.0) > 0 else ""  # evaluation reads state.ema_params


def _token_unit(config) -> str:
    """What a language model's tokens are: bytes, unless data.tokenizer says otherwise (a .bin of token ids)."""
    byte_level = config.data.get("tokenizer", "bytes") == "bytes" and config.model.get("vocab_size", 256) == 256
    return "byte" if byte_level else "token"


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_at_step: int | None = None,
    progress: bool = True,
    echo=print,
    restart: bool = False,
) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

    ``stop_at_step`` ends this invocation early after saving a checkpoint, as a preemption would
    (used by the kill-and-resume test). ``restart`` allows starting from step 0 in a workdir that
    holds an earlier run's metrics but no checkpoint (they are kept aside, never overwritten).
    One trainer per workdir: a second one raises WorkdirError naming the first one's pid.
    Returns a summary dict (final step, eval metrics, sample). A config built or changed in Python
    is validated first, as the CLI's is (ConfigError naming the bad field).
    """
    config = resolve_config(config)
    workdir = check_workdir(workdir)
    lock = WorkdirLock(workdir, jax.process_index())
    try:
        lock.acquire()
    except WorkdirLockedError as e:
        raise WorkdirError(str(e)) from None
    stop = StopRequest()
    try:
        with stop.installed():
            return _train_and_evaluate(config, workdir, stop, stop_at_step=stop_at_step, progress=progress, echo=echo, restart=restart)
    except Interrupted as e:
        if jax.process_index() == 0:
            echo(f"{e}; run the same command to resume")
        return {"workdir": workdir, "interrupted": True, "signal": stop.signal_name}
    finally:
        lock.release()


def _train_and_evaluate(config, workdir: str, stop: StopRequest, *, stop_at_step, progress, echo, restart) -> dict:
    primary = jax.process_index() == 0
    say = echo if primary else (lambda *a, **k: None)
    started = time.time()

    # --- checks that must fail before any work
    run = Run(config)
    devices = list(run.mesh.devices.flat)
    memory_budget.check_state_fits(run.abstract_state, devices)
    config = run.config  # with model values read off the data (ModelSpec.from_data)
    if config.train.early_stopping_metric:
        _check_stopping_metric(run, config.train.early_stopping_metric)
    probe_checkpoint_dir(os.path.join(workdir, "checkpoints"))
    t = config.train

    # --- state: restore the latest intact checkpoint, else init already sharded
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    iterator = run.train_iterator()
    restored = checkpointer.restore_latest(run.abstract_state, notify=say, check_data=iterator.state_problem)
    if restored is None:
        _guard_history(workdir, restart, say)
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
    writer.summary.config(config.to_dict())
    say(
        f"{config.model_name}: {n_params:,} params | data {run.data.source}: {run.data.description} | "
        f"{run.mesh.devices.size} {jax.default_backend()} device(s), mesh {parallel.mesh_shape(run.mesh)}"
    )
    for line in run.startup_report():
        say(line)

    # --- compile once, then loop
    stop.raise_if_stopped(f"before compiling (nothing new to save; {_resume_hint(restored)})")
    compiled_step = run.compile_train_step()
    memory_budget.check_compiled_fits(compiled_step, devices)
    stop.raise_if_stopped(f"before the first step (nothing new to save; {_resume_hint(restored)})")
    eval_batches = run.eval_batches()
    end_step = t.steps if stop_at_step is None else min(t.steps, stop_at_step)
    if stopping_rule is not None:
        if stopping.stopped:
            say(f"this run already stopped early at step {start_step}: {early_stopping.describe(stopping_rule, stopping)}")
            end_step = start_step
    totals, window_start, window_time = None, start_step, time.time()
    last_saved = start_step if restored is not None else None
    step = start_step
    profile = ProfileWindow(t.profile_steps, os.path.join(workdir, "tensorboard"))
    bar = tqdm(total=t.steps, initial=start_step, desc="train", unit="step", disable=not (progress and primary),
               dynamic_ncols=True, mininterval=0.5, file=sys.stdout)
    try:
        while step < end_step and not stop:
            profile.before_step(step)
            batch = run.place_batch(next(iterator))
            state, metrics = compiled_step(state, batch)
            totals = metrics if totals is None else accumulate_metrics(totals, metrics)
            step += 1
            bar.update(1)
            if profile.after_step(step, state) and primary:
                bar.write(f"profiled steps {step - profile.window[1] + 1}-{step} into {profile.logdir} (TensorBoard's Profile tab)")
            stop.check(step)

            log_step = step % t.log_every == 0 or step == t.steps
            if log_step:
                _check_finite(run.to_global(state), step)
                count = step - window_start
                host = {k: v / count for k, v in run.host_metrics(totals).items()}
                host["steps_per_s"] = count / max(time.time() - window_time, 1e-9)
                writer.write(step, "train", host)
                bar.set_postfix(loss=f"{host['loss']:.3f}", refresh=False)
                if primary and not progress:
                    train_logger.info(train_line(step, t.steps, host["loss"], host["steps_per_s"]))
                totals, window_start, window_time = None, step, time.time()
            if step % t.eval_every == 0 and step != t.steps:
                result = run.evaluate(run.to_global(state), eval_batches)
                writer.write(step, "eval", result)
                writer.summary.images(step, run.plot(run.to_global(state), workdir, step))
                if primary:
                    bar.write(f"step {step}: {run.data.held_out_name}{_ema_note(config)} " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
                if stopping_rule is not None:
                    stopping, improved = early_stopping.update(stopping_rule, stopping, result[stopping_rule.metric], step)
                    if improved:
                        best.save(step, run.to_global(state), data_state())
                    elif stopping.stopped:
                        end_step = step  # this step's checkpoint is saved below, then the loop ends
            if step % config.checkpoint.every == 0 or step == end_step:
                if not log_step:  # a log step was checked above
                    _check_finite(run.to_global(state), step)
                checkpointer.save(step, run.to_global(state), data_state())
                last_saved = step
        if stop and step != last_saved:
            _check_finite(run.to_global(state), step)
            checkpointer.save(step, run.to_global(state), data_state())
            last_saved = step
    except BaseException:
        with contextlib.suppress(Exception):
            profile.after_step(step, None)
        bar.close()
        iterator.close()
        _close_after_failure(checkpointer, best)
        raise
    profile.after_step(step, None)  # a run that stopped inside the window
    bar.close()
    iterator.close()  # stops grain's read-ahead thread and worker processes
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
    stop.raise_if_stopped(f"after the last checkpoint (step {step}); the final evaluation did not run")
    state = run.to_global(state)
    result = run.evaluate(state, eval_batches)
    # An early-stopped run was evaluated at its last step already; a finished run run again has its row.
    if not stopping.stopped and not _logged(writer.path, step, "eval"):
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
        if not _logged(writer.path, test_step, "test"):
            writer.write(test_step, "test", test)
        summary["test"] = dict(test, step=test_step, state=which)
    if "sparsity" in result:
        say(f"sparsity {100 * result['sparsity']:.1f} % of prunable weights are zero; {prune_lib.nonzero_count(state.params):,} of {n_params:,} params nonzero")
    if primary:
        summary["plot"] = plot_loss_curves(
            read_metrics(writer.path), os.path.join(workdir, "plots", "loss.png"), title=f"{config.model_name} ({workdir})"
        )
    task_plots = run.plot(state, workdir, step)  # every process helps gather the params
    if primary:
        summary["task_plots"] = task_plots
        writer.summary.images(step, [summary["plot"], *task_plots])
    writer.close()
    say(f"{run.data.held_out_name}{_ema_note(config)} at step {step}: {run.task.report(result).replace('bits per byte', f'bits per {_token_unit(config)}')}; "
        f"{_format_duration(summary['train_seconds'])} in all")
    if test is not None:
        say(f"test at step {test_step} ({which}): {run.task.report(test)}")
    if run.spec.task == "lm":
        stop.raise_if_stopped(f"after the final evaluation (step {step}); the sample was not drawn")
        sample = run.sample(state, config.sample.prompt, config.sample.length,
                            temperature=config.sample.temperature, top_k=config.sample.top_k,
                            top_p=config.sample.get("top_p", 0.0), seed=config.seed)
        summary["sample"] = sample
        say(f"sample ({config.sample.length} {_token_unit(config)}s after {config.sample.prompt!r}):")
        say(config.sample.prompt + sample)
    return summary

"""The training loop around the pure steps: ``train_and_evaluate(config, workdir)``.

Pipeline order (one banner per stage): workdir + data checks, mesh, model + optimizer, sharded
init or checkpoint restore, compile, loop, final evaluation, plot and sample. The CLI, tests and
notebooks all call this one function; nothing here parses argv or exits the process. What is
built from the config before the first step (data, mesh, parallel mode, module, compiled steps)
is ``train.compiled_run.Run``; the loop reads only its interface, whichever the parallel mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from archlab.train import early_stopping, memory_budget, parallel
from archlab.train.checkpoint import Checkpointer, first_nonfinite_leaf, probe_checkpoint_dir
from archlab.train.compiled_run import Run, accumulate_metrics
from archlab.train.config import ConfigError, resolve_config
from archlab.train.errors import NonFiniteLossError, WorkdirError
from archlab.train.metrics import MetricWriter, plot_loss_curves, read_metrics
from archlab.train.optim import prune as prune_lib
from archlab.train.profiling import ProfileWindow
from archlab.train.state import TrainState, param_count
from archlab.train.stop_request import Interrupted, StopRequest
from archlab.train.train_log import LOGGER as train_logger, train_line
from archlab.train.workdir_lock import WorkdirLock, WorkdirLockedError
from archlab.train.workdir_setup import check_workdir, guard_history, write_run_info  # noqa: F401  (check_workdir, write_run_info: also public here)


# ------------------------------------------------------------------------------------ helpers


def _check_stopping_metric(run: Run, metric: str) -> None:
    """train.early_stopping_metric must be one of the task's eval metrics."""
    names = run.eval_metric_names()
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


def _resume_hint(restored) -> str:
    return f"the latest checkpoint is step {restored[2]}" if restored is not None else "no checkpoint was written yet"


def _close_after_failure(checkpointer: Checkpointer, stopper) -> None:
    """Closes the checkpointers while another error is on its way out: theirs must not replace it."""
    for closable in (checkpointer, stopper):
        with contextlib.suppress(Exception):
            closable.close()


def _logged(path: str, step: int, split: str) -> bool:
    return os.path.isfile(path) and any(r.get("step") == step and r.get("split") == split for r in read_metrics(path))


def _score_test_split(run: Run, state: TrainState, step: int, stopper, say) -> tuple[dict, int, str]:
    """(metrics, step, "best state" | "last state") on the test split, for the state the validation
    split chose: early stopping's best (restored from ``WORKDIR/best``), else the last state."""
    test_state, test_step, which = state, step, "last state"
    restored = stopper.restore_best(run.abstract_state, notify=say)
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


# ------------------------------------------------------------------------------ stages of a run


def _checked_run(config, workdir: str) -> Run:
    """The Run, after the checks that must fail before any work (memory, the stopping metric, a
    writable checkpoints directory)."""
    run = Run(config)
    memory_budget.check_state_fits(run.abstract_state, list(run.mesh.devices.flat))
    if run.config.train.early_stopping_metric:
        _check_stopping_metric(run, run.config.train.early_stopping_metric)
    probe_checkpoint_dir(os.path.join(workdir, "checkpoints"))
    return run


def _restore_or_init(run: Run, checkpointer: Checkpointer, iterator, workdir: str, restart: bool, say):
    """(state in the train step's layout, start step, the restored (state, data, step) or None):
    the latest intact checkpoint with the iterator set to its position, else a fresh state."""
    restored = checkpointer.restore_latest(run.abstract_state, notify=say, check_data=iterator.state_problem)
    if restored is None:
        guard_history(workdir, restart, say)
        return run.init_state(run.config.seed), 0, None
    state, data_state, start_step = restored
    state = run.to_layout(state)
    iterator.set_state(data_state)
    say(f"resuming from step {start_step} in {checkpointer.directory}")
    return state, start_step, restored


def _open_records(run: Run, workdir: str, start_step: int, primary: bool, say) -> tuple[MetricWriter, int]:
    """(metric writer, param count): config.json written, metrics.jsonl cut back to ``start_step``,
    the start-up report said."""
    config = run.config
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
    return writer, n_params


def _compile(run: Run, stop: StopRequest, restored):
    """The compiled train step, checked against the device memory; a pending signal ends the run
    before and after the compile."""
    stop.raise_if_stopped(f"before compiling (nothing new to save; {_resume_hint(restored)})")
    compiled_step = run.compile_train_step()
    memory_budget.check_compiled_fits(compiled_step, list(run.mesh.devices.flat))
    stop.raise_if_stopped(f"before the first step (nothing new to save; {_resume_hint(restored)})")
    return compiled_step


@dataclasses.dataclass(frozen=True)
class LoopParts:
    """What the step loop and the final evaluation use besides the train state, built once per call."""

    run: Run
    compiled_step: Callable
    iterator: Any
    checkpointer: Checkpointer
    stopper: early_stopping.EarlyStopper
    writer: MetricWriter
    eval_batches: Any
    stop: StopRequest
    workdir: str
    primary: bool
    progress: bool
    say: Callable

    def checkpoint_data(self) -> dict:
        """The iterator's position, plus the early-stopping counters."""
        return {**self.iterator.get_state(), **self.stopper.checkpoint_data()}


def _log_train(parts: LoopParts, bar, step: int, totals, window_start: int, window_time: float) -> None:
    """The mean train metrics since ``window_start`` (a host sync) into metrics.jsonl and the bar or log."""
    steps = parts.run.config.train.steps
    count = step - window_start
    host = {k: v / count for k, v in parts.run.host_metrics(totals).items()}
    host["steps_per_s"] = count / max(time.time() - window_time, 1e-9)
    parts.writer.write(step, "train", host)
    bar.set_postfix(loss=f"{host['loss']:.3f}", refresh=False)
    if parts.primary and not parts.progress:
        train_logger.info(train_line(step, steps, host["loss"], host["steps_per_s"]))


def _evaluate_in_training(parts: LoopParts, bar, state: TrainState, step: int) -> None:
    """The held-out split's metrics of the global ``state``, logged with the task's figures, then
    observed by early stopping (which may stop the run at this step)."""
    run = parts.run
    result = run.evaluate(state, parts.eval_batches)
    parts.writer.write(step, "eval", result)
    parts.writer.summary.images(step, run.plot(state, parts.workdir, step))
    if parts.primary:
        bar.write(f"step {step}: {run.data.held_out_name}{_ema_note(run.config)} " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    parts.stopper.observe(step, result, state, parts.checkpoint_data)


def _save(parts: LoopParts, state: TrainState, step: int, checked: bool) -> None:
    """A checkpoint of the global ``state``, checked for non-finite values first unless ``checked``."""
    if not checked:
        _check_finite(state, step)
    parts.checkpointer.save(step, state, parts.checkpoint_data())


def _train_steps(parts: LoopParts, state: TrainState, start_step: int, end_step: int, resumed: bool) -> tuple[TrainState, int]:
    """(state, step) after stepping from ``start_step`` to ``end_step``, a stop request or early
    stopping: logs, evaluates and checkpoints on the config's intervals, saves the step it stops
    at, then closes the iterator and the checkpointers (on an error too)."""
    run, t = parts.run, parts.run.config.train
    totals, window_start, window_time = None, start_step, time.time()
    last_saved = start_step if resumed else None
    step = start_step
    profile = ProfileWindow(t.profile_steps, os.path.join(parts.workdir, "tensorboard"))
    bar = tqdm(total=t.steps, initial=start_step, desc="train", unit="step", disable=not (parts.progress and parts.primary),
               dynamic_ncols=True, mininterval=0.5, file=sys.stdout)
    try:
        while step < end_step and not parts.stop and not parts.stopper.stopped:
            profile.before_step(step)
            batch = run.place_batch(next(parts.iterator))
            state, metrics = parts.compiled_step(state, batch)
            totals = metrics if totals is None else accumulate_metrics(totals, metrics)
            step += 1
            bar.update(1)
            if profile.after_step(step, state) and parts.primary:
                bar.write(f"profiled steps {step - profile.window[1] + 1}-{step} into {profile.logdir} (TensorBoard's Profile tab)")
            parts.stop.check(step)

            log_step = step % t.log_every == 0 or step == t.steps
            eval_step = step % t.eval_every == 0 and step != t.steps
            save_step = step % run.config.checkpoint.every == 0 or step == end_step
            if not (log_step or eval_step or save_step):
                continue
            global_state = run.to_global(state)  # checkpoints, evaluation and plots read the global layout
            if log_step:
                _check_finite(global_state, step)
                _log_train(parts, bar, step, totals, window_start, window_time)
                totals, window_start, window_time = None, step, time.time()
            if eval_step:
                _evaluate_in_training(parts, bar, global_state, step)
            if save_step or parts.stopper.stopped:  # a step early stopping ends the run at is saved too
                _save(parts, global_state, step, checked=log_step)
                last_saved = step
        if parts.stop and step != last_saved:
            _save(parts, run.to_global(state), step, checked=False)
            last_saved = step
    except BaseException:
        with contextlib.suppress(Exception):
            profile.after_step(step, None)
        bar.close()
        parts.iterator.close()
        _close_after_failure(parts.checkpointer, parts.stopper)
        raise
    profile.after_step(step, None)  # a run that stopped inside the window
    bar.close()
    parts.iterator.close()  # stops grain's read-ahead thread and worker processes
    parts.checkpointer.close()
    parts.stopper.close()
    return state, step


def _final_evaluation(parts: LoopParts, state: TrainState, step: int, summary: dict) -> tuple[dict, tuple | None]:
    """(held-out metrics, (test metrics, step, which state) or None) of the final global ``state``,
    logged once and added to ``summary``; early stopping observes the final evaluation."""
    run, writer = parts.run, parts.writer
    result = run.evaluate(state, parts.eval_batches)
    # An early-stopped run was evaluated at its last step already; a finished run run again has its row.
    if not parts.stopper.stopped and not _logged(writer.path, step, "eval"):
        writer.write(step, "eval", result)
    summary.update(eval=result, interrupted=False)
    stopping = parts.stopper.finish(step, result, state, parts.checkpoint_data)
    if stopping is not None:
        summary["early_stopping"] = stopping
    if run.data.test_batches is None:
        return result, None
    # the held-out split was a validation split: score the test split once
    test, test_step, which = _score_test_split(run, state, step, parts.stopper, parts.say)
    if not _logged(writer.path, test_step, "test"):
        writer.write(test_step, "test", test)
    summary["test"] = dict(test, step=test_step, state=which)
    return result, (test, test_step, which)


def _final_reports(parts: LoopParts, state: TrainState, step: int, summary: dict, result: dict, test) -> None:
    """Sparsity, the loss curves and the task's figures, the closing lines, and a language model's
    sample; plots and sample are added to ``summary``."""
    run, config, say = parts.run, parts.run.config, parts.say
    if "sparsity" in result:
        say(f"sparsity {100 * result['sparsity']:.1f} % of prunable weights are zero; "
            f"{prune_lib.nonzero_count(state.params):,} of {summary['param_count']:,} params nonzero")
    if parts.primary:
        summary["plot"] = plot_loss_curves(
            read_metrics(parts.writer.path), os.path.join(parts.workdir, "plots", "loss.png"), title=f"{config.model_name} ({parts.workdir})"
        )
    task_plots = run.plot(state, parts.workdir, step)  # every process helps gather the params
    if parts.primary:
        summary["task_plots"] = task_plots
        parts.writer.summary.images(step, [summary["plot"], *task_plots])
    parts.writer.close()
    say(f"{run.data.held_out_name}{_ema_note(config)} at step {step}: {run.task.report(result).replace('bits per byte', f'bits per {_token_unit(config)}')}; "
        f"{_format_duration(summary['train_seconds'])} in all")
    if test is not None:
        test_metrics, test_step, which = test
        say(f"test at step {test_step} ({which}): {run.task.report(test_metrics)}")
    if run.spec.task == "lm":
        parts.stop.raise_if_stopped(f"after the final evaluation (step {step}); the sample was not drawn")
        sample = run.sample(state, config.sample.prompt, config.sample.length,
                            temperature=config.sample.temperature, top_k=config.sample.top_k,
                            top_p=config.sample.get("top_p", 0.0), seed=config.seed)
        summary["sample"] = sample
        say(f"sample ({config.sample.length} {_token_unit(config)}s after {config.sample.prompt!r}):")
        say(config.sample.prompt + sample)


# ------------------------------------------------------------------------------------- the loop


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
    run = _checked_run(config, workdir)
    config = run.config  # with model values read off the data (ModelSpec.from_data)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    iterator = run.train_iterator()
    state, start_step, restored = _restore_or_init(run, checkpointer, iterator, workdir, restart, say)
    stopper = early_stopping.EarlyStopper(config.train, workdir, restored[1] if restored else None, start_step)
    writer, n_params = _open_records(run, workdir, start_step, primary, say)
    compiled_step = _compile(run, stop, restored)
    parts = LoopParts(run, compiled_step, iterator, checkpointer, stopper, writer, run.eval_batches(), stop, workdir, primary, progress, say)

    end_step = config.train.steps if stop_at_step is None else min(config.train.steps, stop_at_step)
    if stopper.stopped:
        say(stopper.already_stopped(start_step))
    state, step = _train_steps(parts, state, start_step, end_step, resumed=restored is not None)
    summary = {"workdir": workdir, "step": step, "param_count": n_params, "train_seconds": time.time() - started}
    if stopper.stopped:
        say(stopper.stopped_at(step, config.train.steps))
        summary["early_stopping"] = stopper.summary()
    elif stop or step < config.train.steps:
        reason = f"received {stop.signal_name}" if stop else f"stop_at_step={stop_at_step}"
        say(f"{reason}: saved checkpoint at step {step} in {checkpointer.directory}; run the same command to resume")
        summary["interrupted"] = True
        writer.close()
        return summary

    stop.raise_if_stopped(f"after the last checkpoint (step {step}); the final evaluation did not run")
    state = run.to_global(state)
    result, test = _final_evaluation(parts, state, step, summary)
    _final_reports(parts, state, step, summary, result, test)
    return summary

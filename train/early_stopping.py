"""Early stopping on an evaluation metric with patience (``train.early_stopping_metric``).

A pure update on a small explicit state: each evaluation either improves on the best value by
more than ``min_delta`` (that state is then saved as the best checkpoint, ``WORKDIR/best``) or
counts as a bad evaluation; ``patience`` bad evaluations in a row stop the run. The state is a
JSON-able dict saved with each checkpoint's data position, so a resumed run keeps counting, and a
run that already stopped stays stopped. :class:`EarlyStopper` holds the rule, the state and the
best checkpoint of one training invocation: the loop calls ``observe`` after each evaluation and
``finish`` after the final one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax

from archlab.train.checkpoint import Checkpointer

MODES = ("auto", "min", "max")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    metric: str
    mode: str  # "min" or "max" (resolved)
    patience: int
    min_delta: float = 0.0


@dataclasses.dataclass(frozen=True)
class StoppingState:
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0  # evaluations in a row without improvement
    stopped: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> "StoppingState":
        return cls(**data) if data else cls()


def resolve_mode(metric: str, mode: str) -> str:
    """``auto``: minimise losses and errors, maximise everything else (accuracy, psnr, ...)."""
    if mode != "auto":
        return mode
    return "min" if any(word in metric for word in ("loss", "error", "bits", "perplexity")) else "max"


def config_problems(train_config) -> list[str]:
    t = train_config
    if t.early_stopping_mode not in MODES:
        return [f"train.early_stopping_mode must be one of {', '.join(MODES)} (got {t.early_stopping_mode!r})"]
    if t.early_stopping_metric and t.patience < 1:
        return [f"train.patience must be >= 1 evaluation (got {t.patience})"]
    if t.early_stopping_min_delta < 0:
        return [f"train.early_stopping_min_delta must be >= 0 (got {t.early_stopping_min_delta})"]
    return []


def from_config(train_config) -> EarlyStopping | None:
    t = train_config
    if not t.early_stopping_metric:
        return None
    return EarlyStopping(t.early_stopping_metric, resolve_mode(t.early_stopping_metric, t.early_stopping_mode), t.patience,
                         t.early_stopping_min_delta)


def update(rule: EarlyStopping, state: StoppingState, value: float, step: int) -> tuple[StoppingState, bool]:
    """(new state, improved) after an evaluation at ``step`` measured ``value``."""
    if state.best is None:
        improved = True
    elif rule.mode == "min":
        improved = value < state.best - rule.min_delta
    else:
        improved = value > state.best + rule.min_delta
    if improved:
        return StoppingState(best=float(value), best_step=step, bad_evals=0, stopped=False), True
    bad = state.bad_evals + 1
    return dataclasses.replace(state, bad_evals=bad, stopped=bad >= rule.patience), False


def describe(rule: EarlyStopping, state: StoppingState) -> str:
    """One line for the log when the run stops."""
    return (f"early stopping: {rule.metric} did not improve for {state.bad_evals} evaluation(s) (patience {rule.patience}); "
            f"best {rule.metric} {state.best:.4f} at step {state.best_step}")


class BestCheckpoint:
    """``WORKDIR/best``: the state of the best evaluation so far (orbax, one step kept) next to a
    copy of the run's config.json, so it is a workdir of its own (``restore_params``, export).

    Created lazily at the first improvement. On resume from ``resume_step``, best steps newer than
    it are dropped: the resumed run re-evaluates those steps and saves them again. A best saved at
    ``resume_step`` itself is the state resumed from, so it is kept and not written twice.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.workdir = os.path.join(workdir, "best")
        self._source_config = os.path.join(workdir, "config.json")
        self._checkpointer = None
        directory = os.path.join(self.workdir, "checkpoints")
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.isdigit() and int(name) > resume_step:
                    shutil.rmtree(os.path.join(directory, name))

    def save(self, step: int, state, data_state: dict) -> None:
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep=1)
        if step in self._checkpointer.all_steps():
            return  # a finished run run again re-evaluates its final step: that same state is already the best
        if jax.process_index() == 0 and os.path.isfile(self._source_config):
            shutil.copyfile(self._source_config, os.path.join(self.workdir, "config.json"))
        self._checkpointer.save(step, state, data_state)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None


class EarlyStopper:
    """Early stopping of one training invocation: the rule (None without
    ``train.early_stopping_metric``, when every call is a no-op), its state restored from the
    checkpoint's data (``saved_data``) and the best checkpoint, pruned to ``resume_step``."""

    def __init__(self, train_config, workdir: str, saved_data: dict | None, resume_step: int):
        self.rule = from_config(train_config)
        self.state = StoppingState.from_json(saved_data.get("early_stopping") if saved_data and self.rule else None)
        self.best = BestCheckpoint(workdir, resume_step=resume_step) if self.rule else None

    @property
    def stopped(self) -> bool:
        return self.state.stopped

    def checkpoint_data(self) -> dict:
        """The counters, saved beside each checkpoint's data position."""
        return {"early_stopping": self.state.to_json()} if self.rule else {}

    def observe(self, step: int, metrics: dict, state, checkpoint_data) -> bool:
        """After an evaluation at ``step``: saves ``state`` (global layout) as the best where it
        improved, with ``checkpoint_data()`` read after the update; True when the run stops here."""
        if self.rule is None:
            return False
        self.state, improved = update(self.rule, self.state, metrics[self.rule.metric], step)
        if improved:
            self.best.save(step, state, checkpoint_data())
        return self.state.stopped

    def finish(self, step: int, metrics: dict, state, checkpoint_data) -> dict | None:
        """After the final evaluation: observes it unless the run stopped early, closes the best
        checkpoint; the run summary's ``early_stopping`` entry (None without a rule)."""
        if self.rule is None:
            return None
        if not self.state.stopped:
            self.observe(step, metrics, state, checkpoint_data)
            self.close()
        return self.summary()

    def summary(self) -> dict:
        return dict(self.state.to_json(), metric=self.rule.metric, best_workdir=self.best.workdir)

    def restore_best(self, abstract_state, notify):
        """(state, data, step) of the best checkpoint (``WORKDIR/best``), read-only; None without one."""
        directory = os.path.join(self.best.workdir, "checkpoints") if self.best is not None else ""
        if not (directory and os.path.isdir(directory)):
            return None
        saved = Checkpointer(directory, keep=1, read_only=True)
        try:
            return saved.restore_latest(abstract_state, notify=notify)
        finally:
            saved.close()

    def already_stopped(self, step: int) -> str:
        return f"this run already stopped early at step {step}: {describe(self.rule, self.state)}"

    def stopped_at(self, step: int, steps: int) -> str:
        return f"{describe(self.rule, self.state)}; stopped at step {step} (of {steps}), best state kept in {self.best.workdir}"

    def close(self) -> None:
        if self.best is not None:
            self.best.close()

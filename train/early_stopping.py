"""Early stopping on an evaluation metric with patience (``train.early_stopping_metric``).

A pure update on a small explicit state: each evaluation either improves on the best value by
more than ``min_delta`` (the loop then saves that state as the best checkpoint, ``WORKDIR/best``)
or counts as a bad evaluation; ``patience`` bad evaluations in a row stop the run. The state is a
JSON-able dict saved with each checkpoint's data position, so a resumed run keeps counting, and a
run that already stopped stays stopped.
"""

from __future__ import annotations

import dataclasses

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
    it are dropped: the resumed run re-evaluates those steps and saves them again.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        import os
        import shutil

        self.workdir = os.path.join(workdir, "best")
        self._source_config = os.path.join(workdir, "config.json")
        self._checkpointer = None
        directory = os.path.join(self.workdir, "checkpoints")
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.isdigit() and int(name) > resume_step:
                    shutil.rmtree(os.path.join(directory, name))

    def save(self, step: int, state, data_state: dict) -> None:
        import os
        import shutil

        import jax

        if self._checkpointer is None:
            self._checkpointer = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep=1)
        if jax.process_index() == 0 and os.path.isfile(self._source_config):
            shutil.copyfile(self._source_config, os.path.join(self.workdir, "config.json"))
        self._checkpointer.save(step, state, data_state)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

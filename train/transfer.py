"""Transfer learning (``train.init_from``, ``train.freeze_backbone``).

A new run starts from another run's latest checkpoint instead of a random init: every param (and
BatchNorm statistic) is copied over except the classifier's ``head`` module, which is
re-initialised when its shape differs (another ``model.num_classes``) or when the source was
trained on another label set (``data.classes``), since its rows would mean other classes. Any
other mismatch is the wrong source and is refused, naming the param and both shapes. Optimizer
state and step start fresh. A workdir that already holds a checkpoint resumes from it instead
(resume wins over init, as in big_vision).
``train.freeze_backbone`` then trains the head alone (train/optim/freeze.py).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from archlab.train.checkpoint import CheckpointError
from archlab.train.errors import TransferError
from archlab.train.optim.freeze import HEAD, has_head, is_head
from archlab.train.tree_paths import param_path_name, shapes_by_name
from archlab.train.workdir import restore_params


@dataclasses.dataclass(frozen=True)
class InitSource:
    params: dict  # host arrays, the source run's
    model_state: dict
    replace_head: bool
    reason: str  # why the head is (or is not) re-initialised, for the log
    model_name: str
    workdir: str
    step: int

    def describe(self) -> str:
        return f"{self.model_name} from {self.workdir} (step {self.step}); {self.reason}"


def check_compatible(source: dict, target: dict, what: str, where: str, *, allow_head: bool) -> list[str]:
    """Names of ``target`` leaves (``head.*`` only) whose shapes differ; raises TransferError on
    any other difference, naming the param and both shapes."""
    have, want = shapes_by_name(source), shapes_by_name(target)
    differing = []
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            raise TransferError(f"{where}: {what} {name} {want[name]} of this model is missing from the source run")
        if name not in want:
            if allow_head and is_head(name):
                differing.append(name)
                continue
            raise TransferError(f"{where}: the source run has {what} {name} {have[name]} that this model lacks")
        if have[name] != want[name]:
            if allow_head and is_head(name):
                differing.append(name)
                continue
            raise TransferError(f"{where}: {what} {name} is {have[name]} in the source run but {want[name]} in this model; "
                                f"only the {HEAD} may differ")
    return differing


def load_source(config, abstract_state, notify=print) -> InitSource:
    """Restores ``config.train.init_from`` and checks it fits ``abstract_state`` (this run's)."""
    workdir = config.train.init_from
    where = f"train.init_from={workdir!r}"
    checkpoints = os.path.join(workdir, "checkpoints")
    if os.path.isdir(workdir) and os.path.isfile(os.path.join(workdir, "config.json")) and not (os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        raise TransferError(f"{where}: the run has no checkpoint yet (nothing in {checkpoints})")
    try:
        source_config, params, model_state, step = restore_params(workdir, notify=notify)
    except (CheckpointError, ValueError) as e:
        raise TransferError(f"{where}: {e}") from None
    if not has_head(abstract_state.params):
        raise TransferError(f"{where}: --model={config.model_name} has no '{HEAD}' module to replace; transfer needs a classifier with one")
    differing = check_compatible(params, abstract_state.params, "param", where, allow_head=True)
    check_compatible(model_state, abstract_state.model_state, "model state", where, allow_head=False)
    old_classes, new_classes = source_config.data.get("classes", ""), config.data.get("classes", "")
    if differing:
        name = differing[0]
        reason = f"head re-initialised ({name} was {shapes_by_name(params).get(name, 'absent')}, now {shapes_by_name(abstract_state.params).get(name, 'absent')})"
    elif old_classes != new_classes:
        reason = f"head re-initialised (source trained on data.classes={old_classes or 'all'!r}, this run on {new_classes or 'all'!r})"
    else:
        reason = "head kept (same classes)"
    return InitSource(jax.device_get(params), jax.device_get(model_state), bool(differing) or old_classes != new_classes, reason,
                      source_config.model_name, os.path.abspath(workdir), int(step))


def _place_like(value: np.ndarray, like: jax.Array) -> jax.Array:
    value = np.asarray(value, like.dtype)
    return jax.make_array_from_callback(value.shape, like.sharding, lambda index: value[index])


def merge(fresh, source, *, replace_head: bool):
    """``fresh`` with every leaf taken from ``source`` (same tree) except, if ``replace_head``, the head's."""
    source_by_name = {param_path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(source)}

    def pick(path, leaf):
        name = param_path_name(path)
        if replace_head and is_head(name):
            return leaf
        return _place_like(source_by_name[name], leaf)

    return jax.tree_util.tree_map_with_path(pick, fresh)


def initialize_from(state, source: InitSource):
    """A fresh (sharded) state with ``source``'s params and model state in place of the random ones.

    The fresh optimizer state is kept: AdamW moments, clipping and pruning masks start from zeros
    and ones whatever the params' values, so re-initialising it (another compile) would change nothing.
    """
    params = merge(state.params, source.params, replace_head=source.replace_head)
    model_state = merge(state.model_state, source.model_state, replace_head=False)
    ema_params = None if state.ema_params is None else jax.tree.map(jnp.copy, params)  # the EMA starts at the start
    return state.replace(params=params, model_state=model_state, ema_params=ema_params)


def trainable_count(params, frozen: bool) -> tuple[int, int]:
    """(trainable, total) param counts; with ``frozen`` only the head trains."""
    total = sum(int(np.prod(s)) for s in shapes_by_name(params).values())
    if not frozen:
        return total, total
    return sum(int(np.prod(s)) for n, s in shapes_by_name(params).items() if is_head(n)), total

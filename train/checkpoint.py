"""Orbax checkpoints of the whole run: train state + data-iterator position, saved together.

``restore_latest`` walks back from the newest step when a step is truncated or corrupt, says so,
and, once an older step restored, moves the unreadable ones aside (``<step>.unreadable``) rather
than deleting them; if no step is intact it raises, touching nothing, instead of starting over. Restoring takes the target's shardings,
so a checkpoint written on one mesh loads onto another.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

from train.state import TrainState

class CheckpointError(RuntimeError):
    """No intact checkpoint where one was expected."""


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with items ``state`` and ``data``."""

    def __init__(self, directory: str, *, keep: int):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
            item_names=("state", "data"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        """Starts an async save; ``wait`` (or the next save) makes it durable."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=True,
        )

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["data"])

    def restore_latest(self, abstract_state: TrainState, notify=print) -> tuple[TrainState, dict, int] | None:
        """Newest intact (state, data_state, step), or None when there is no checkpoint at all."""
        steps = self.all_steps()
        if not steps:
            return None
        unreadable, mismatches = [], []
        for step in reversed(steps):
            mismatch = self._incompatibility(step, abstract_state)
            if mismatch:  # a different config, or metadata too damaged to match: don't read the arrays
                mismatches.append((step, mismatch))
                unreadable.append(step)
                continue
            try:
                state, data_state = self.restore(step, abstract_state)
                _check_restored(state, step)
            except Exception as e:  # orbax/tensorstore raise many types for a damaged step
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                notify(f"checkpoint step {step} in {self.directory} is unreadable ({reason}); trying the previous one")
                unreadable.append(step)
                continue
            for bad, why in mismatches:
                notify(f"checkpoint step {bad} in {self.directory} does not match the state ({why}); treating it as damaged")
            if unreadable:
                notify(f"resuming from step {step}; unreadable steps kept aside as <step>.unreadable")
                if jax.process_index() == 0:
                    for bad in unreadable:
                        self._move_aside(bad)
            return state, data_state, step
        config_mismatches = [(step, why) for step, why in mismatches if not why.endswith("missing from the checkpoint")]
        if config_mismatches:  # shapes differ, or the checkpoint has extra entries: not truncation
            step, why = config_mismatches[0]
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} was written with a different model/optimizer config ({why}); "
                "use the config it was trained with, or another --workdir"
            )
        raise CheckpointError(
            f"no intact checkpoint in {self.directory} (tried steps {', '.join(map(str, reversed(steps)))}"
            + (f"; newest: {mismatches[0][1]}" if mismatches else "")
            + "); refusing to start over: move the directory away to train from scratch"
        )

    def _incompatibility(self, step: int, abstract_state: TrainState) -> str | None:
        """Why the saved state's shapes differ from this config's, or None if they match.

        Read from orbax's metadata only, so a config mismatch is reported in one line without
        reading (and failing on) every array of every step. Unreadable metadata returns None and
        is left to the restore attempt.
        """
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)  # orbax warns that the item dir has no step metadata
        try:
            saved = ocp.StandardCheckpointer().metadata(os.path.join(self.directory, str(step), "state"))
            saved = _shapes_by_path(getattr(saved, "item_metadata", saved))
        except Exception:
            return None
        finally:
            absl_logger.setLevel(level)
        wanted = _shapes_by_path(abstract_state)
        if saved == wanted:
            return None
        differing = sorted(k for k in saved.keys() & wanted.keys() if saved[k] != wanted[k])
        if differing:
            key = differing[0]
            return f"{key} is {saved[key]} in the checkpoint but {wanted[key]} in this config"
        key = sorted(saved.keys() ^ wanted.keys())[0]
        return f"{key} is {'only in the checkpoint' if key in saved else 'missing from the checkpoint'}"

    def _move_aside(self, step: int) -> None:
        src = os.path.join(self.directory, str(step))
        dst = f"{src}.unreadable"
        if os.path.isdir(src) and not os.path.exists(dst):
            os.rename(src, dst)
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _shapes_by_path(tree) -> dict[str, tuple]:
    def name(entry):
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    return {
        ".".join(name(e) for e in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


def _check_restored(state: TrainState, step: int) -> None:
    if int(state.step) != step:
        raise CheckpointError(f"state.step={int(state.step)} does not match directory step {step}")


def load_run_info(workdir: str) -> dict:
    """The run's config.json: resolved config, versions, mesh, example input shape."""
    import json

    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"{workdir!r} holds no trained run (no config.json); train one with python -m launch.train")
    try:
        with open(path) as f:
            info = json.load(f)
        info["config"] = ml_collections.ConfigDict(info["config"])
        return info
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid run config ({e})") from None


def restore_params(workdir: str, notify=print):
    """(config, params, model_state, step) of the latest intact checkpoint, on one device."""
    import flax.linen as nn
    import jax.numpy as jnp

    from arch import get_model_spec
    from train.state import init_train_state, make_optimizer

    info = load_run_info(workdir)
    config = info["config"]
    spec = get_model_spec(config.model_name)
    module = spec.make_module(config.model)
    tx = make_optimizer(config.train, spec.param_groups)
    if "example_input" in info:  # the shape the run was initialised with (image size, channels)
        example = jnp.zeros(info["example_input"]["shape"], info["example_input"]["dtype"])
    else:
        example = jnp.asarray(spec.example_input(config))
    boxed = jax.eval_shape(lambda: init_train_state(module, tx, example, jax.random.PRNGKey(0)))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), nn.meta.unbox(boxed))
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep)
    try:
        restored = checkpointer.restore_latest(abstract, notify=notify)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    state, _, step = restored
    return config, state.params, state.model_state, step

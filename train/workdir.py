"""A finished or running workdir, read for inference: its config.json and its newest intact params.

Sampling, export, quantization, distillation (the teacher), transfer learning (the source run) and
the NeRF view renderer all restore a run through :func:`restore_params`, read-only.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from archlab.arch import get_model_spec, with_new_model_fields
from archlab.train.checkpoint import Checkpointer
from archlab.train.errors import CheckpointError
from archlab.train.optim import make_optimizer
from archlab.train.state import abstract_train_state, eval_params, uses_ema


def load_run_info(workdir: str) -> dict:
    """The run's config.json: resolved config, versions, mesh, example input shape."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise CheckpointError(f"workdir {workdir!r} does not exist")
    if not os.path.isfile(path):
        raise CheckpointError(f"{workdir!r} holds no trained run (no config.json); train one with python -m launch.train")
    try:
        with open(path) as f:
            info = json.load(f)
        info["config"] = ml_collections.ConfigDict(with_new_model_fields(info["config"]))
        return info
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid run config ({e})") from None


def restore_params(workdir: str, notify=print):
    """(config, params, model_state, step) of the newest intact checkpoint, on one device; the
    params are the EMA params where the run kept them (``train.ema_decay`` > 0).

    Read-only: writes, creates and renames nothing in ``workdir``."""
    info = load_run_info(workdir)
    config = info["config"]
    spec = get_model_spec(config.model_name)
    module = spec.make_module(config.model)
    tx = make_optimizer(config.train, spec.param_groups)
    if "example_input" in info:  # the shape the run was initialised with (image size, channels)
        example = jnp.zeros(info["example_input"]["shape"], info["example_input"]["dtype"])
    else:
        example = jnp.asarray(spec.example_input(config))
    boxed = abstract_train_state(module, tx, example, ema=uses_ema(config.train))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), nn.meta.unbox(boxed))
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoint in {directory}")
    checkpointer = Checkpointer(directory, keep=config.checkpoint.keep, read_only=True)
    try:
        restored = checkpointer.restore_latest(abstract, notify=notify)
    finally:
        checkpointer.close()
    if restored is None:
        raise CheckpointError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    state, _, step = restored
    return config, eval_params(state), state.model_state, step

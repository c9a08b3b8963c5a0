"""The train state: a plain pytree of arrays (train/optim/ builds the optimizer that updates it).

TrainState holds everything a resumed run needs besides the data position: params, optimizer
state, non-trainable model collections (e.g. BatchNorm statistics), the step, the run's base rng
and ``nonfinite_step`` (-1, or the first step whose loss or gradient was not finite), and
``ema_params`` where ``train.ema_decay`` > 0 (None otherwise, so older checkpoints still restore).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array
    nonfinite_step: jax.Array
    ema_params: Any = None  # train.ema_decay > 0: the params' moving average (evaluated and exported); else None


def init_train_state(module: nn.Module, tx: optax.GradientTransformation, example_input, rng: jax.Array, *,
                     ema: bool = False) -> TrainState:
    """Initialises a TrainState whose params are still boxed with logical axis names; with ``ema``
    its ``ema_params`` start as a copy of the params.

    Call it under ``jax.eval_shape`` to read the partition specs, and under ``jax.jit`` with
    ``out_shardings`` (after ``nn.meta.unbox``) to create the params already sharded.
    """
    params_rng, dropout_rng, run_rng = jax.random.split(rng, 3)
    variables = module.init({"params": params_rng, "dropout": dropout_rng}, example_input, deterministic=True)
    variables = dict(variables)
    params = variables.pop("params")
    variables.pop("cache", None)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=variables,
        rng=run_rng,
        nonfinite_step=jnp.full((), -1, jnp.int32),
        ema_params=jax.tree.map(lambda p: p, params) if ema else None,
    )


def abstract_train_state(module: nn.Module, tx: optax.GradientTransformation, example_input, *, ema: bool = False) -> TrainState:
    """The shapes and dtypes of :func:`init_train_state`'s state, params still boxed with their
    logical axis names (``jax.eval_shape``: nothing is allocated or compiled)."""
    return jax.eval_shape(lambda rng: init_train_state(module, tx, example_input, rng, ema=ema), jax.random.PRNGKey(0))


def uses_ema(train_config: ml_collections.ConfigDict) -> bool:
    return getattr(train_config, "ema_decay", 0.0) > 0  # getattr: configs saved before train.ema_decay


def eval_params(state: TrainState):
    """The params to evaluate, sample and export: the EMA where the run keeps one."""
    return state.params if state.ema_params is None else state.ema_params


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(params))))

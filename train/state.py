"""The train state (a plain pytree of arrays) and the optimizer that updates it.

TrainState holds everything a resumed run needs besides the data position: params, optimizer
state, non-trainable model collections (e.g. BatchNorm statistics), the step, the run's base rng
and ``nonfinite_step`` (-1, or the first step whose loss or gradient was not finite).
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


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to ``learning_rate``, then cosine decay to ``learning_rate * min_lr_ratio``."""
    t = train_config
    warmup = min(t.warmup_steps, max(t.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=t.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(t.steps, warmup + 1),
        end_value=t.learning_rate * t.min_lr_ratio,
    )


def _decay_mask(params):
    # Decay matrices (kernels, embeddings), not biases or LayerNorm scales.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with warmup + cosine schedule and optional global-norm clipping."""
    t = train_config
    parts = []
    if t.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(t.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate_schedule(t),
            b1=t.b1,
            b2=t.b2,
            weight_decay=t.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*parts)


def init_train_state(module: nn.Module, tx: optax.GradientTransformation, example_input, rng: jax.Array) -> TrainState:
    """Initialises a TrainState whose params are still boxed with logical axis names.

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
    )


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(params))))

"""The train state (a plain pytree of arrays) and the optimizer that updates it.

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

from archlab.train import optimizers


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array
    nonfinite_step: jax.Array
    ema_params: Any = None  # train.ema_decay > 0: the params' moving average (evaluated and exported); else None


def learning_rate_schedule(train_config: ml_collections.ConfigDict, peak: float | None = None) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` (or ``peak``), then ``train.schedule`` (train/optimizers.py;
    default cosine decay to ``peak * min_lr_ratio``)."""
    return optimizers.schedule(train_config, train_config.learning_rate if peak is None else peak)


def parse_group_learning_rates(spec: str, param_groups: tuple[str, ...]) -> dict[str, float]:
    """``"generator:2e-4,discriminator:1e-3"`` -> {group: lr}; raises ValueError naming the groups."""
    rates = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition(":")
        if not sep or name not in param_groups:
            raise ValueError(f"bad train.group_learning_rates entry {part!r}; use group:rate with groups {', '.join(param_groups) or '(none for this model)'}")
        try:
            rates[name] = float(value)
        except ValueError:
            raise ValueError(f"bad learning rate {value!r} for group {name!r} in train.group_learning_rates") from None
        if rates[name] <= 0:
            raise ValueError(f"learning rate for group {name!r} must be > 0")
    return rates


def make_optimizer(train_config: ml_collections.ConfigDict, param_groups: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """``train.optimizer`` (default AdamW) on ``train.schedule`` (default warmup + cosine), with
    optional global-norm clipping (train/optimizers.py builds the optimizer and schedule).

    With ``param_groups`` (top-level param names, e.g. a GAN's generator and discriminator) each
    group gets its own optimizer state and peak learning rate (``train.group_learning_rates``) inside
    one ``optax.multi_transform``: two optimizers, one opt_state, one train step. Clipping is
    per group too, so one player's large gradient does not shrink the other's update.
    ``train.loss_scaling=dynamic`` (float16) wraps it all in dynamic loss scaling (train/loss_scale.py).
    ``train.sparsity`` > 0 appends global magnitude pruning (train/prune.py), whose masks then
    live in the optimizer state.
    """
    t = train_config
    pruning = _pruning(t)
    if not param_groups:
        parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
        return _loss_scaling(t, _freeze_backbone(t, optax.chain(*parts, optimizers.base_optimizer(t, t.learning_rate), *pruning)))
    rates = parse_group_learning_rates(t.group_learning_rates, param_groups)
    transforms = {}
    for group in param_groups:
        parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
        transforms[group] = optax.chain(*parts, optimizers.base_optimizer(t, rates.get(group, t.learning_rate)))

    def labels(params):
        return {name: jax.tree.map(lambda _: name, subtree) for name, subtree in params.items()}

    tx = optax.multi_transform(transforms, labels)
    return _loss_scaling(t, optax.chain(tx, *pruning) if pruning else tx)


def _loss_scaling(t: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    # train.loss_scaling=dynamic (set by model.dtype=float16; train/loss_scale.py): the scale lives in opt_state
    if getattr(t, "loss_scaling", "none") != "dynamic":
        return tx
    from archlab.train.loss_scale import dynamic_loss_scale

    return dynamic_loss_scale(tx)


def _freeze_backbone(t: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    # train.freeze_backbone (train/transfer.py): only the "head" module trains; getattr for older configs
    if not getattr(t, "freeze_backbone", False):
        return tx
    from archlab.train.transfer import freeze_backbone

    return freeze_backbone(tx)


def _pruning(t: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
    # getattr: configs saved before pruning existed have no train.sparsity
    if getattr(t, "sparsity", 0.0) <= 0:
        return []
    from archlab.train.prune import from_config

    return [from_config(t)]


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


def uses_ema(train_config: ml_collections.ConfigDict) -> bool:
    return getattr(train_config, "ema_decay", 0.0) > 0  # getattr: configs saved before train.ema_decay


def eval_params(state: TrainState):
    """The params to evaluate, sample and export: the EMA where the run keeps one."""
    return state.params if state.ema_params is None else state.ema_params


def param_count(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(params))))

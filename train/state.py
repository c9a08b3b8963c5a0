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


def learning_rate_schedule(train_config: ml_collections.ConfigDict, peak: float | None = None) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` (or ``peak``), then cosine decay to ``peak * min_lr_ratio``."""
    t = train_config
    peak = t.learning_rate if peak is None else peak
    warmup = min(t.warmup_steps, max(t.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(t.steps, warmup + 1),
        end_value=peak * t.min_lr_ratio,
    )


def _decay_mask(params):
    # Decay matrices (kernels, embeddings), not biases or LayerNorm scales.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


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


def _adamw(t: ml_collections.ConfigDict, peak_lr: float) -> optax.GradientTransformation:
    return optax.adamw(
        learning_rate_schedule(t, peak_lr),
        b1=t.b1,
        b2=t.b2,
        weight_decay=t.weight_decay,
        mask=_decay_mask,
    )


def make_optimizer(train_config: ml_collections.ConfigDict, param_groups: tuple[str, ...] = ()) -> optax.GradientTransformation:
    """AdamW with warmup + cosine schedule and optional global-norm clipping.

    With ``param_groups`` (top-level param names, e.g. a GAN's generator and discriminator) each
    group gets its own AdamW state and peak learning rate (``train.group_learning_rates``) inside
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
        return _loss_scaling(t, _freeze_backbone(t, optax.chain(*parts, _adamw(t, t.learning_rate), *pruning)))
    rates = parse_group_learning_rates(t.group_learning_rates, param_groups)
    transforms = {}
    for group in param_groups:
        parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
        transforms[group] = optax.chain(*parts, _adamw(t, rates.get(group, t.learning_rate)))

    def labels(params):
        return {name: jax.tree.map(lambda _: name, subtree) for name, subtree in params.items()}

    tx = optax.multi_transform(transforms, labels)
    return _loss_scaling(t, optax.chain(tx, *pruning) if pruning else tx)


def _loss_scaling(t: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    # train.loss_scaling=dynamic (set by model.dtype=float16; train/loss_scale.py): the scale lives in opt_state
    if getattr(t, "loss_scaling", "none") != "dynamic":
        return tx
    from train.loss_scale import dynamic_loss_scale

    return dynamic_loss_scale(tx)


def _freeze_backbone(t: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    # train.freeze_backbone (train/transfer.py): only the "head" module trains; getattr for older configs
    if not getattr(t, "freeze_backbone", False):
        return tx
    from train.transfer import freeze_backbone

    return freeze_backbone(tx)


def _pruning(t: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
    # getattr: configs saved before pruning existed have no train.sparsity
    if getattr(t, "sparsity", 0.0) <= 0:
        return []
    from train.prune import from_config

    return [from_config(t)]


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

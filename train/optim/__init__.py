"""The optimizer a run trains with, assembled from its ``train`` config section.

The pieces live one per file: ``optimizers.py`` (``train.optimizer``, ``train.schedule``, EMA),
``loss_scale.py`` (dynamic loss scaling for float16), ``prune.py`` (global magnitude pruning) and
``freeze.py`` (``train.freeze_backbone``); :func:`make_optimizer` chains them.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from archlab.train.optim import freeze, loss_scale, optimizers, prune


def learning_rate_schedule(train_config: ml_collections.ConfigDict, peak: float | None = None) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` (or ``peak``), then ``train.schedule`` (optim/optimizers.py;
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
    optional global-norm clipping (optim/optimizers.py builds the optimizer and schedule).

    With ``param_groups`` (top-level param names, e.g. a GAN's generator and discriminator) each
    group gets its own optimizer state and peak learning rate (``train.group_learning_rates``) inside
    one ``optax.multi_transform``: two optimizers, one opt_state, one train step. Clipping is
    per group too, so one player's large gradient does not shrink the other's update.
    ``train.loss_scaling=dynamic`` (float16) wraps it all in dynamic loss scaling (optim/loss_scale.py).
    ``train.sparsity`` > 0 appends global magnitude pruning (optim/prune.py), whose masks then
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
    # train.loss_scaling=dynamic (set by model.dtype=float16; optim/loss_scale.py): the scale lives in opt_state
    if getattr(t, "loss_scaling", "none") != "dynamic":
        return tx
    return loss_scale.dynamic_loss_scale(tx)


def _freeze_backbone(t: ml_collections.ConfigDict, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    # train.freeze_backbone (optim/freeze.py): only the "head" module trains; getattr for older configs
    if not getattr(t, "freeze_backbone", False):
        return tx
    return freeze.freeze_backbone(tx)


def _pruning(t: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
    # getattr: configs saved before pruning existed have no train.sparsity
    if getattr(t, "sparsity", 0.0) <= 0:
        return []
    return [prune.from_config(t)]

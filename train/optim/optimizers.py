"""The optimizers and learning-rate schedules ``train.optimizer`` / ``train.schedule`` name, and
the parameter EMA (``train.ema_decay``).

Every schedule warms up linearly from 0 to the peak over ``train.warmup_steps``; they differ after.
Weight decay is decoupled (``weight_decay * lr * param``, kernels and embeddings only) wherever the
optimizer has it, so switching optimizer keeps its meaning. ``make_optimizer`` (train/state.py)
wraps the transformation built here with clipping, param groups, freezing, pruning, loss scaling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("adamw", "sgd", "momentum", "adagrad", "lion", "adafactor")
SCHEDULES = ("cosine", "linear", "constant", "rsqrt")


def config_problems(t: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with the optimizer, schedule and EMA fields of ``train`` (empty: nothing)."""
    problems = []
    optimizer, schedule, decay = getattr(t, "optimizer", "adamw"), getattr(t, "schedule", "cosine"), getattr(t, "ema_decay", 0.0)
    if optimizer not in OPTIMIZERS:
        problems.append(f"train.optimizer must be one of {', '.join(OPTIMIZERS)} (got {optimizer!r})")
    if schedule not in SCHEDULES:
        problems.append(f"train.schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")
    if not 0.0 <= decay < 1.0:
        problems.append(f"train.ema_decay must be in [0, 1), 0 = no EMA (got {decay})")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        problems.append(f"train.min_lr_ratio must be in [0, 1] (got {t.min_lr_ratio})")
    if t.warmup_steps < 0:
        problems.append(f"train.warmup_steps must be >= 0 (got {t.warmup_steps})")
    return problems


def schedule(t: ml_collections.ConfigDict, peak: float) -> optax.Schedule:
    """``train.schedule`` after a linear warmup to ``peak``: cosine or linear decay to
    ``peak * min_lr_ratio`` at ``train.steps``, constant, or rsqrt (``peak * sqrt(warmup / step)``)."""
    warmup = min(t.warmup_steps, max(t.steps - 1, 0))
    decay_steps = max(t.steps, warmup + 1)
    end = peak * t.min_lr_ratio
    kind = getattr(t, "schedule", "cosine")  # configs saved before train.schedule existed are cosine
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=decay_steps, end_value=end)
    if kind == "constant":
        return optax.warmup_constant_schedule(init_value=0.0, peak_value=peak, warmup_steps=warmup)
    ramp = optax.linear_schedule(0.0, peak, warmup)
    if kind == "linear":
        after = optax.linear_schedule(peak, end, decay_steps - warmup)
    elif kind == "rsqrt":
        w = max(warmup, 1)
        after = lambda count: peak * jnp.sqrt(w / jnp.maximum(count + warmup, w).astype(jnp.float32))
    else:
        raise ValueError(f"unknown train.schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
    return optax.join_schedules([ramp, after], [warmup])


def decay_mask(params):
    # Decay matrices (kernels, embeddings), not biases or LayerNorm scales.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def base_optimizer(t: ml_collections.ConfigDict, peak_lr: float) -> optax.GradientTransformation:
    """``train.optimizer`` with the configured schedule peaking at ``peak_lr`` (no clipping or wrappers)."""
    lr = schedule(t, peak_lr)
    kind, wd = getattr(t, "optimizer", "adamw"), t.weight_decay
    if kind == "adamw":
        return optax.adamw(lr, b1=t.b1, b2=t.b2, weight_decay=wd, mask=decay_mask)
    if kind == "lion":
        return optax.lion(lr, b1=t.b1, b2=t.b2, weight_decay=wd, mask=decay_mask)
    if kind == "adafactor":
        # optax adds adafactor's decay after the learning rate: scaled by the peak rate, as AdamW's is by its rate
        return optax.adafactor(lr, weight_decay_rate=wd * peak_lr if wd > 0 else None, weight_decay_mask=decay_mask)
    plain = {"sgd": lambda: optax.sgd(lr), "momentum": lambda: optax.sgd(lr, momentum=t.b1, nesterov=False),
             "adagrad": lambda: optax.adagrad(lr)}
    if kind not in plain:
        raise ValueError(f"unknown train.optimizer {kind!r}; valid: {', '.join(OPTIMIZERS)}")
    # decayed weights join the gradient before the (learning-rate) scale: lr * (g + wd * p) for sgd
    return optax.chain(optax.add_decayed_weights(wd, decay_mask), plain[kind]()) if wd > 0 else plain[kind]()


def ema_update(ema_params, params, decay: float):
    """One EMA step, ``decay * ema + (1 - decay) * params``, in each leaf's dtype."""
    return jax.tree.map(lambda e, p: (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype),
                        ema_params, params)

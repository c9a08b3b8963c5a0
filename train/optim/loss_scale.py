"""Dynamic loss scaling for float16 compute (``--config.model.dtype=float16``).

float16 gradients underflow to zero below ~6e-8 and overflow above 65504. The train step multiplies
the loss by ``scale`` before differentiating and divides the gradients by it afterwards
(:func:`scaled_value_and_grad`); :func:`dynamic_loss_scale` wraps the optimizer so the scale lives
in the optimizer state (and so in checkpoints): a step whose gradients are not finite is skipped
(no update, inner optimizer state unchanged) and halves the scale; ``growth_interval`` finite steps
in a row double it. bfloat16 has float32's exponent range and needs none of this.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax


class LossScaleState(NamedTuple):
    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32: finite steps since the last change of scale
    inner: Any  # the wrapped optimizer's state


def dynamic_loss_scale(inner: optax.GradientTransformation, *, initial_scale: float = 2.0**15, growth_interval: int = 2000,
                       factor: float = 2.0, min_scale: float = 1.0) -> optax.GradientTransformation:
    """Wraps ``inner``; expects *unscaled* gradients (the step divides by the scale first)."""
    def init(params):
        return LossScaleState(jnp.asarray(initial_scale, jnp.float32), jnp.zeros((), jnp.int32), inner.init(params))

    def update(grads, state, params=None):
        finite = all_finite(grads)
        safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, inner_state = inner.update(safe_grads, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        inner_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner_state, state.inner)
        scale, good_steps = next_scale(state.scale, state.good_steps, finite, growth_interval=growth_interval,
                                       factor=factor, min_scale=min_scale)
        return updates, LossScaleState(scale, good_steps, inner_state)

    return optax.GradientTransformation(init, update)


def next_scale(scale, good_steps, finite, *, growth_interval: int, factor: float, min_scale: float):
    """(scale, good_steps) after one step: halve on overflow, grow after ``growth_interval`` good steps."""
    grown = good_steps + 1 >= growth_interval
    new_scale = jnp.where(finite, jnp.where(grown, scale * factor, scale), jnp.maximum(scale / factor, min_scale))
    new_good = jnp.where(finite & ~grown, good_steps + 1, 0).astype(jnp.int32)
    return new_scale.astype(jnp.float32), new_good


def all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def find_scale(opt_state) -> jax.Array | None:
    """The current loss scale if ``opt_state`` comes from :func:`dynamic_loss_scale`, else None."""
    return opt_state.scale if isinstance(opt_state, LossScaleState) else None


def scaled_value_and_grad(loss_of: Callable, scale: jax.Array | None) -> Callable:
    """``jax.value_and_grad(loss_of, has_aux=True)`` that differentiates ``loss * scale`` and returns
    the unscaled loss and gradients (non-finite where float16 overflowed); plain when scale is None."""
    grad_fn = jax.value_and_grad(loss_of, has_aux=True)
    if scale is None:
        return grad_fn

    def scaled_loss(p):
        loss, aux = loss_of(p)
        return loss * scale.astype(loss.dtype), aux

    scaled_grad_fn = jax.value_and_grad(scaled_loss, has_aux=True)

    def value_and_grad(params):
        (loss, aux), grads = scaled_grad_fn(params)
        return (loss / scale, aux), jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)

    return value_and_grad

"""int8 fake quantisation for Dense and Conv: quantisation-aware training and post-training quantisation.

``--config.model.quant=int8`` gives the CNN, ResNets and MLP Dense/Conv layers whose matmul (or
convolution) sees int8-rounded operands: symmetric weights with one scale per output channel
(``max |w| / 127``, recomputed from the weights every call) and symmetric inputs with one scale
per tensor, from a running estimate of ``max |x|`` kept in the ``quant`` collection. That
collection is model state like BatchNorm's ``batch_stats``: updated whenever it is mutable
(training, a calibration pass), read frozen in evaluation, saved in checkpoints. Rounding uses the
straight-through estimator: the gradient is the identity inside the clip range and zero outside.

The layers are ``nn.Dense`` / ``nn.Conv`` with Flax's ``dot_general_cls`` / ``conv_general_dilated_cls``
hooks, so params have exactly the names and shapes of the float layers: a float32 checkpoint loads
into the int8 model unchanged, which is what post-training quantisation (train/quantize.py) needs.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

QUANT_MODES = ("none", "int8")
QMAX = 127.0  # symmetric int8: codes -127..127 (-128 unused, so the range is symmetric)
EMA_DECAY = 0.99  # after the first 1 / (1 - EMA_DECAY) observations the running max is an EMA


def check_quant(mode: str) -> str:
    """Returns ``mode`` or raises ValueError naming the valid modes."""
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quant mode {mode!r}; valid: {', '.join(QUANT_MODES)}")
    return mode


def fake_quant(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``round(clip(x / scale)) * scale`` in x's dtype, with a straight-through gradient.

    Values inside ``[-127 scale, 127 scale]`` come back within ``scale / 2`` and pass the gradient
    unchanged; values outside are clipped and get zero gradient. ``scale`` gets no gradient.
    """
    scale = jax.lax.stop_gradient(scale).astype(x.dtype)
    bound = QMAX * scale
    clipped = jnp.clip(x, -bound, bound)  # d clip / dx: 1 inside, 0 outside
    rounded = jnp.round(clipped / scale) * scale
    return clipped + jax.lax.stop_gradient(rounded - clipped)


def weight_scale(kernel: jax.Array) -> jax.Array:
    """Per-output-channel scale (the last axis) of a Dense or Conv kernel: ``max |w| / 127``."""
    amax = jnp.max(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)), keepdims=True)
    return jnp.maximum(amax, 1e-8) / QMAX


def quantize_weights(kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(int8 codes, float32 per-channel scales) of a kernel: what a deployed int8 model stores."""
    scale = weight_scale(kernel.astype(jnp.float32))
    codes = jnp.clip(jnp.round(kernel / scale), -QMAX, QMAX).astype(jnp.int8)
    return codes, scale.reshape(-1)


class ActivationQuantizer(nn.Module):
    """Per-tensor fake quantisation of a layer input with a running ``max |x|`` in ``quant``.

    ``amax`` is the mean of the per-batch maxima over the first ``1 / (1 - EMA_DECAY)`` batches (so a
    calibration pass of N <= 100 batches sets it to exactly their mean), an EMA after that;
    ``count`` is how many batches it has seen. Before any observation inputs pass through unrounded.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        amax = self.variable("quant", "amax", lambda: jnp.zeros((), jnp.float32))
        count = self.variable("quant", "count", lambda: jnp.zeros((), jnp.int32))
        if self.is_mutable_collection("quant") and not self.is_initializing():
            observed = jnp.max(jnp.abs(jax.lax.stop_gradient(x))).astype(jnp.float32)
            weight = jnp.maximum(1.0 / (count.value + 1).astype(jnp.float32), 1.0 - EMA_DECAY)
            amax.value = amax.value + weight * (observed - amax.value)
            count.value = count.value + 1
        scale = jnp.maximum(amax.value, 1e-8) / QMAX
        return jnp.where(count.value > 0, fake_quant(x, scale), x)


class QuantDotGeneral(nn.Module):
    """``lax.dot_general`` of a fake-quantised input and a per-channel fake-quantised kernel."""

    @nn.compact
    def __call__(self, lhs, rhs, dimension_numbers, precision=None, **kwargs):
        lhs = ActivationQuantizer(name="input")(lhs)
        rhs = fake_quant(rhs, weight_scale(rhs))
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)


class QuantConvGeneralDilated(nn.Module):
    """``lax.conv_general_dilated`` of a fake-quantised input and a per-channel fake-quantised kernel."""

    @nn.compact
    def __call__(self, lhs, rhs, *args, **kwargs):
        lhs = ActivationQuantizer(name="input")(lhs)
        rhs = fake_quant(rhs, weight_scale(rhs))
        return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def dense_cls(quant: str):
    """``nn.Dense`` for ``quant="none"``, its int8 fake-quantised twin for ``"int8"`` (same params)."""
    if check_quant(quant) == "none":
        return nn.Dense
    return functools.partial(nn.Dense, dot_general_cls=QuantDotGeneral)


def conv_cls(quant: str):
    """``nn.Conv`` for ``quant="none"``, its int8 fake-quantised twin for ``"int8"`` (same params)."""
    if check_quant(quant) == "none":
        return nn.Conv
    return functools.partial(nn.Conv, conv_general_dilated_cls=QuantConvGeneralDilated)


def quant_dense(quant: str, features: int, axes: tuple[str, str], *, dtype, param_dtype, name: str) -> nn.Dense:
    """``arch.layers.logical_dense`` (same params, same logical axes), fake-quantised when ``quant="int8"``."""
    from arch.layers import logical_init

    return dense_cls(quant)(
        features, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=logical_init(nn.initializers.lecun_normal(), axes),
        bias_init=logical_init(nn.initializers.zeros, axes[1:]),
    )

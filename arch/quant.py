"""int8 fake quantisation for Dense and Conv: quantisation-aware training and post-training quantisation.

``--config.model.quant=int8`` gives the CNN, ResNets and MLP Dense/Conv layers whose matmul (or
convolution) sees int8-rounded operands: symmetric weights with one scale per output channel
(``max |w| / 127``, recomputed from the weights every call) and symmetric inputs with one scale
per tensor, from a running estimate of ``max |x|`` kept in the ``quant`` collection. The layer
multiplies the integer codes (held in float) and rescales the result, as int8 hardware does: the
sums of integer products are exact, so JAX and an exported graph agree to float rounding of the
rescale instead of flipping a code wherever accumulation order moves a value across a rounding
boundary (measured on a calibrated CNN before this: 3 of 4096 examples, up to 0.006). That
collection is model state like BatchNorm's ``batch_stats``: updated whenever it is mutable
(training, a calibration pass), read frozen in evaluation, saved in checkpoints. Rounding uses the
straight-through estimator: the gradient is the identity inside the clip range and zero outside.

The layers are ``nn.Dense`` / ``nn.Conv`` subclasses whose matmul / convolution goes through
``QuantDotGeneral`` / ``QuantConvGeneralDilated`` (the modules Flax's ``dot_general_cls`` /
``conv_general_dilated_cls`` hooks would create, same names), so params have exactly the names
and shapes of the float layers: a float32 checkpoint loads into the int8 model unchanged, which is
what post-training quantisation (train/ptq.py) needs. The subclasses write their call out
rather than inherit it because jax2onnx converts ``nn.Dense`` / ``nn.Conv`` by patching their
``__call__`` with float plugins that skip the hooks; a subclass's own method is not patched, so
the ONNX export traces the rounding as plain ops (Div, Clip, Round, Mul, MatMul / Conv).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import logical_init

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


def quantize_to_codes(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``round(clip(x / scale, -127, 127))``: integer codes held in x's dtype, straight-through gradient.

    The forward value is exactly the rounded code (``c + (round(c) - c)`` is exact in floating
    point because ``round(c) - c`` is), so a matmul of codes by codes sums integers: exact in
    float32 whatever the summation order while the sums stay below 2^24, hence identical in JAX
    and in an exported graph. The gradient is ``1 / scale`` inside the clip range and zero
    outside; ``scale`` gets none.
    """
    scale = jax.lax.stop_gradient(scale).astype(x.dtype)
    clipped = jnp.clip(x / scale, -QMAX, QMAX)
    return clipped + jax.lax.stop_gradient(jnp.round(clipped) - clipped)


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
    """Per-tensor int8 codes of a layer input, from a running ``max |x|`` in ``quant``: ``(codes, scale)``.

    ``amax`` is the mean of the per-batch maxima over the first ``1 / (1 - EMA_DECAY)`` batches (so a
    calibration pass of N <= 100 batches sets it to exactly their mean), an EMA after that;
    ``count`` is how many batches it has seen. Before any observation the input passes through
    unrounded, as ``(x, 1)``.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        amax = self.variable("quant", "amax", lambda: jnp.zeros((), jnp.float32))
        count = self.variable("quant", "count", lambda: jnp.zeros((), jnp.int32))
        if self.is_mutable_collection("quant") and not self.is_initializing():
            observed = jnp.max(jnp.abs(jax.lax.stop_gradient(x))).astype(jnp.float32)
            weight = jnp.maximum(1.0 / (count.value + 1).astype(jnp.float32), 1.0 - EMA_DECAY)
            amax.value = amax.value + weight * (observed - amax.value)
            count.value = count.value + 1
        scale = jnp.maximum(amax.value, 1e-8) / QMAX
        seen = count.value > 0
        return jnp.where(seen, quantize_to_codes(x, scale), x), jnp.where(seen, scale, 1.0).astype(x.dtype)


def _int8_operands(quantizer: ActivationQuantizer, lhs: jax.Array, rhs: jax.Array):
    """(input codes, kernel codes, per-output-channel scale of their product): ``lhs @ rhs ~ codes @ codes * scale``."""
    lhs_codes, lhs_scale = quantizer(lhs)
    rhs_scale = jax.lax.stop_gradient(weight_scale(rhs)).astype(rhs.dtype)
    return lhs_codes, quantize_to_codes(rhs, rhs_scale), lhs_scale * rhs_scale.reshape(-1)


class QuantDotGeneral(nn.Module):
    """``lax.dot_general`` of int8 codes of the input (per tensor) and of the kernel (per output channel),
    rescaled: equal to the matmul of the fake-quantised operands, and exact in its integer sums."""

    @nn.compact
    def __call__(self, lhs, rhs, dimension_numbers, precision=None, **kwargs):
        lhs_codes, rhs_codes, scale = _int8_operands(ActivationQuantizer(name="input"), lhs, rhs)
        return jax.lax.dot_general(lhs_codes, rhs_codes, dimension_numbers, precision=precision, **kwargs) * scale


class QuantConvGeneralDilated(nn.Module):
    """``lax.conv_general_dilated`` of int8 codes, rescaled like ``QuantDotGeneral`` (output channels last)."""

    @nn.compact
    def __call__(self, lhs, rhs, *args, **kwargs):
        lhs_codes, rhs_codes, scale = _int8_operands(ActivationQuantizer(name="input"), lhs, rhs)
        return jax.lax.conv_general_dilated(lhs_codes, rhs_codes, *args, **kwargs) * scale


class Int8Dense(nn.Dense):
    """``nn.Dense`` (same fields, same params) whose matmul is ``QuantDotGeneral``.

    The call is written out (Flax's own, less ``jnp.shape``, which jax2onnx turns into a traced
    value) so that exporters trace it as lax ops instead of substituting their float Dense.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = QuantDotGeneral()(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


class Int8Conv(nn.Conv):
    """``nn.Conv`` (same fields, same params) whose convolution is ``QuantConvGeneralDilated``.

    Written out like ``Int8Dense``, for channels-last inputs with one batch axis and zero
    padding (``"SAME"``, ``"VALID"`` or explicit pairs): what archlab's models use.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        from flax.linen.linear import canonicalize_padding

        kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        spatial = len(kernel_size)
        if inputs.ndim != spatial + 2 or not self.shared_weights or self.mask is not None:
            raise ValueError("model.quant=int8: Int8Conv takes [batch, *spatial, features] inputs with a shared, unmasked kernel "
                             f"(got input rank {inputs.ndim} for {spatial} spatial dims, shared_weights={self.shared_weights}, "
                             f"mask={'set' if self.mask is not None else None})")
        padding = canonicalize_padding(self.padding, spatial)
        if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
            raise ValueError(f"model.quant=int8: Int8Conv supports zero padding only ('SAME', 'VALID' or explicit pairs), got {padding!r}")

        def per_axis(value) -> tuple[int, ...]:
            value = 1 if value is None else value
            return (value,) * spatial if isinstance(value, int) else tuple(value)

        in_features = inputs.shape[-1]
        assert in_features % self.feature_group_count == 0
        kernel = self.param("kernel", self.kernel_init, kernel_size + (in_features // self.feature_group_count, self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        channels_last = (0, spatial + 1, *range(1, spatial + 1))  # N C spatial..., as lax numbers them
        dimension_numbers = jax.lax.ConvDimensionNumbers(channels_last, (spatial + 1, spatial, *range(spatial)), channels_last)
        y = QuantConvGeneralDilated()(
            inputs, kernel, per_axis(self.strides), padding, lhs_dilation=per_axis(self.input_dilation),
            rhs_dilation=per_axis(self.kernel_dilation), dimension_numbers=dimension_numbers,
            feature_group_count=self.feature_group_count, precision=self.precision,
        )
        return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def dense_cls(quant: str):
    """``nn.Dense`` for ``quant="none"``, its int8 fake-quantised twin for ``"int8"`` (same params)."""
    return nn.Dense if check_quant(quant) == "none" else Int8Dense


def conv_cls(quant: str):
    """``nn.Conv`` for ``quant="none"``, its int8 fake-quantised twin for ``"int8"`` (same params)."""
    return nn.Conv if check_quant(quant) == "none" else Int8Conv


def quant_dense(quant: str, features: int, axes: tuple[str, str], *, dtype, param_dtype, name: str) -> nn.Dense:
    """``arch.layers.logical_dense`` (same params, same logical axes), fake-quantised when ``quant="int8"``."""
    return dense_cls(quant)(
        features, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=logical_init(nn.initializers.lecun_normal(), axes),
        bias_init=logical_init(nn.initializers.zeros, axes[1:]),
    )

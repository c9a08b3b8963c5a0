"""Shared building blocks: causal attention with a KV cache, the MLP block, rotary positions,
Inception and residual blocks, and the dehazing layer with a hand-derived gradient.

Parameters carry logical axis names (``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``) and
activations are constrained by logical names (``batch``, ``length``, ``embed``), so sharding is a
table of rules in the config (see ``train/parallel.py``), never placement in model code.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

DEFAULT_INIT = nn.initializers.normal(stddev=0.02)


def logical_init(init_fn, axes: tuple[str | None, ...]):
    """Wraps an initializer so the created parameter is boxed with its logical axis names."""
    return nn.with_logical_partitioning(init_fn, axes)


def logical_dense(features: int, axes: tuple[str, str], *, dtype: Dtype, param_dtype: Dtype, name: str, kernel_init=None) -> nn.Dense:
    """nn.Dense whose kernel/bias carry logical axis names (``axes`` = (input, output))."""
    return nn.Dense(
        features, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=logical_init(kernel_init or nn.initializers.lecun_normal(), axes),
        bias_init=logical_init(nn.initializers.zeros, axes[1:]),
    )


class GatheredEmbed(nn.Embed):
    """nn.Embed whose table is gathered whole before the lookup.

    With the table sharded (vocab over ``model``, embed over ``fsdp``) XLA's SPMD partitioner cannot
    partition the row gather and falls back to replicating through a slow path ("involuntary full
    rematerialization"); gathering the table first is what FSDP does for every weight anyway.
    Same params as nn.Embed.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        table = nn.with_logical_constraint(self.embedding, (None, None))
        (table,) = nn.dtypes.promote_dtype(table, dtype=self.dtype, inexact=False)
        return jnp.take(table, inputs, axis=0)


def token_matmul(x: jax.Array, kernel: jax.Array, dtype: Dtype) -> jax.Array:
    """``x[..., d] @ kernel[d, ...]`` computed as one 2-D matmul over all tokens.

    XLA:CPU runs the backward pass of a 3-D ``[batch, length, d]`` dot_general about 2x slower
    than the same contraction on a flattened ``[batch*length, d]`` operand (measured here), so
    every projection flattens the token axes first.
    """
    lead, d = x.shape[:-1], x.shape[-1]
    out_shape = kernel.shape[1:]
    flat = x.reshape(-1, d).astype(dtype) @ kernel.reshape(d, -1).astype(dtype)
    return flat.reshape(lead + out_shape)


ROTARY_BASE = 10_000.0
# Causal self-attention (training/prefill) splits the queries into this many row blocks; block i
# attends to keys [0, (i + 1) T / blocks) only, so fully masked score blocks are never computed
# (2 blocks: 25 % fewer attention FLOPs). Results equal the full masked square: masked scores
# contribute exactly 0 to the softmax either way (docs/performance.md).
CAUSAL_QUERY_BLOCKS = 2


def rotary_tables(positions: jax.Array, head_dim: int, base: float = ROTARY_BASE) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) of the RoPE angles for ``positions`` [batch, length], each [batch, length, 1, head_dim].

    Computed once per model (not once per layer) and, when the positions are static (training,
    prefill), at trace time so the compiled step holds them as constants (docs/performance.md).
    """
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
    angles = jnp.asarray(positions)[..., None].astype(jnp.float32) * inv_freq  # [B, T, half]
    sin, cos = (jnp.concatenate([t, t], axis=-1)[:, :, None, :] for t in (jnp.sin(angles), jnp.cos(angles)))
    return sin, cos


def static_rotary_tables(length: int, head_dim: int, base: float = ROTARY_BASE) -> tuple[jax.Array, jax.Array]:
    """:func:`rotary_tables` for positions ``0 .. length-1`` ([1, length, 1, head_dim]), evaluated now:
    inside a jit trace they become constants of the program instead of per-step sin/cos work."""
    # numpy, in float32 like rotary_tables: not jax.ensure_compile_time_eval, because exporters
    # (jax2onnx) patch jnp functions with versions that cannot run eagerly inside their trace.
    half = head_dim // 2
    inv_freq = (np.float32(1.0) / (np.float32(base) ** (np.arange(half, dtype=np.float32) / np.float32(half)))).astype(np.float32)
    angles = np.arange(length, dtype=np.float32)[None, :, None] * inv_freq  # [1, T, half]
    sin, cos = (np.concatenate([t, t], axis=-1)[:, :, None, :] for t in (np.sin(angles), np.cos(angles)))
    return jnp.asarray(sin), jnp.asarray(cos)


def apply_rotary(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotates ``x`` [..., head_dim] by the angles whose tables :func:`rotary_tables` made.

    Rotate-half form (the same products and sums as [x1 cos - x2 sin, x2 cos + x1 sin]): one
    multiply-add over the whole head instead of two halves concatenated, which XLA:CPU fuses
    into fewer slice/concat passes forward and backward (docs/performance.md).
    """
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = xf * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
    return rotated.astype(x.dtype)


def rotary_embedding(x: jax.Array, positions: jax.Array, base: float = ROTARY_BASE) -> jax.Array:
    """Applies rotary position embedding (RoPE) to ``x`` of shape [batch, length, heads, head_dim].

    ``positions`` is [batch, length] of absolute integer positions. Only relative distances matter
    to the resulting attention scores, which is what lets decoding run past the training length.
    """
    return apply_rotary(x, *rotary_tables(positions, x.shape[-1], base))


def _softmax_attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T masked) v on [batch, heads, length, head_dim] operands; ``q`` already scaled."""
    scores = q @ k.swapaxes(-1, -2)
    scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return weights @ v


def masked_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array, *, scaled: bool = False) -> jax.Array:
    """Softmax attention over [batch, length, heads, head_dim] inputs; ``mask`` broadcasts to
    [batch, heads, q_len, k_len] with True where a query may attend. ``scaled``: the query
    already carries the 1/sqrt(head_dim) factor.

    Heads are moved next to batch so both products are plain batched matmuls: on XLA:CPU this
    ran the forward+backward ~1.4x faster than ``jax.nn.dot_product_attention`` (measured here).
    """
    if not scaled:
        query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (query, key, value))
    return _softmax_attend(q, k, v, mask).transpose(0, 2, 1, 3)


def causal_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, query_blocks: int = 1, scaled: bool = False) -> jax.Array:
    """Causal softmax attention over [batch, length, heads, head_dim] inputs (query i sees keys <= i).

    The queries are split into ``query_blocks`` row blocks (when they divide the length); block b
    is attended against the keys up to its own last row only, so the fully masked upper blocks of
    the score matrix are neither computed nor differentiated. Equal to :func:`masked_attention`
    with a lower-triangular mask (a masked score's softmax weight is exactly 0 in both).
    """
    length = query.shape[1]
    blocks = query_blocks if query_blocks >= 1 and length % query_blocks == 0 else 1
    if not scaled:
        query = query * jnp.asarray(query.shape[-1] ** -0.5, query.dtype)
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (query, key, value))
    rows = length // blocks
    tril = jnp.tril(jnp.ones((length, length), jnp.bool_))
    outs = []
    for b in range(blocks):
        stop = (b + 1) * rows
        outs.append(_softmax_attend(q[:, :, b * rows:stop], k[:, :, :stop], v[:, :, :stop], tril[b * rows:stop, :stop]))
    out = outs[0] if blocks == 1 else jnp.concatenate(outs, axis=2)
    return out.transpose(0, 2, 1, 3)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection and an optional KV cache.

    In ``decode`` mode keys/values are written into a ring buffer of ``cache_size`` slots in the
    ``cache`` collection; each query attends to the cached positions at most ``cache_size - 1``
    behind it, so generation costs one token of work per step instead of re-running the prefix.
    ``rope`` is the (sin, cos) pair of :func:`rotary_tables` for ``positions`` when the caller
    computed it once for all layers; without it the tables are computed here.
    """

    num_heads: int
    head_dim: int
    rotary: bool = True
    dropout_rate: float = 0.0
    decode: bool = False
    cache_size: int = 128
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, deterministic: bool, rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        d_model = x.shape[-1]
        qkv_kernel = self.param(
            "qkv", logical_init(DEFAULT_INIT, ("embed", None, "heads", "kv")),
            (d_model, 3, self.num_heads, self.head_dim), self.param_dtype,
        )
        qkv = token_matmul(x, qkv_kernel, self.dtype)  # [B, T, 3, N, H]
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, N, H] each
        scale = self.head_dim ** -0.5
        if self.rotary:
            sin, cos = rotary_tables(positions, self.head_dim) if rope is None else rope
            # The softmax scale rides on the query's tables (exact for power-of-two head sizes).
            query = apply_rotary(query, sin * scale, cos * scale)
            key = apply_rotary(key, sin, cos)
        else:
            query = query * jnp.asarray(scale, query.dtype)

        if self.decode:
            out = self._attend_with_cache(query, key, value, positions)
        else:
            out = causal_attention(query, key, value, query_blocks=CAUSAL_QUERY_BLOCKS, scaled=True)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out_kernel = self.param(
            "out", logical_init(DEFAULT_INIT, ("heads", "kv", "embed")),
            (self.num_heads, self.head_dim, d_model), self.param_dtype,
        )
        batch, length = out.shape[:2]
        out = token_matmul(out.reshape(batch, length, -1), out_kernel.reshape(-1, d_model), self.dtype)
        return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)

    def _attend_with_cache(self, query, key, value, positions):
        batch, length, heads, head_dim = key.shape
        slots = self.cache_size
        cached_key = self.variable("cache", "key", jnp.zeros, (batch, slots, heads, head_dim), key.dtype)
        cached_value = self.variable("cache", "value", jnp.zeros, (batch, slots, heads, head_dim), value.dtype)
        # Position + 1 held in each slot; 0 marks an empty slot.
        slot_position = self.variable("cache", "slot_position", jnp.zeros, (slots,), jnp.int32)

        # Writes never wrap inside one call: either one token, or a prefill starting at slot 0.
        start = positions[0, 0] % slots
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, start, 0, 0))
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, start, 0, 0))
        slot_position.value = jax.lax.dynamic_update_slice(
            slot_position.value, positions[0].astype(jnp.int32) + 1, (start,)
        )
        key_pos = slot_position.value - 1  # [S]
        query_pos = positions[0][:, None]  # [T, 1]
        visible = (slot_position.value > 0) & (key_pos <= query_pos) & (key_pos > query_pos - slots)
        return masked_attention(query, cached_key.value, cached_value.value, visible, scaled=True)


class MlpBlock(nn.Module):
    """Position-wise feed-forward block: Dense(embed->mlp), GELU, Dense(mlp->embed), dropout."""

    hidden_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        d_model = x.shape[-1]
        wi = self.param("wi", logical_init(DEFAULT_INIT, ("embed", "mlp")), (d_model, self.hidden_dim), self.param_dtype)
        bi = self.param("bi", logical_init(nn.initializers.zeros, ("mlp",)), (self.hidden_dim,), self.param_dtype)
        wo = self.param("wo", logical_init(DEFAULT_INIT, ("mlp", "embed")), (self.hidden_dim, d_model), self.param_dtype)
        bo = self.param("bo", logical_init(nn.initializers.zeros, ("embed",)), (d_model,), self.param_dtype)
        h = nn.gelu(token_matmul(x, wi, self.dtype) + bi.astype(self.dtype))
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        out = token_matmul(h, wo, self.dtype) + bo.astype(self.dtype)
        return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)


# --------------------------------------------------------------------------------------------
# Convolutional blocks: parallel branches (Inception) and skip connections (residual).

CONV_AXES = (None, None, "conv_in", "conv_out")


def logical_conv(features: int, kernel_size: int, *, strides: int = 1, dilation: int = 1, use_bias: bool = True,
                 dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, name: str | None = None, kernel_init=None) -> nn.Conv:
    """A square "SAME" nn.Conv whose kernel/bias carry the logical axes ``(.., .., conv_in, conv_out)``."""
    return nn.Conv(
        features, (kernel_size, kernel_size), (strides, strides), padding="SAME", kernel_dilation=(dilation, dilation),
        use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=logical_init(kernel_init or nn.initializers.kaiming_normal(), CONV_AXES),
        bias_init=logical_init(nn.initializers.zeros, ("conv_out",)),
    )


class ConvUnit(nn.Module):
    """Conv -> (norm) -> ReLU; with a ``norm`` factory (e.g. a configured nn.BatchNorm) the conv has no bias."""

    features: int
    kernel_size: int = 3
    dilation: int = 1
    norm: Any = None  # callable(name=...) -> module, or None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = logical_conv(self.features, self.kernel_size, dilation=self.dilation, use_bias=self.norm is None,
                         dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
        if self.norm is not None:
            x = self.norm(name="norm")(x)
        return nn.relu(x)


class InceptionBlock(nn.Module):
    """GoogLeNet's Inception module (Szegedy et al. 2015): four parallel branches over one input,
    concatenated on channels, so the block sees 1x1, 3x3 and 5x5 context at once.

    branches: ``1x1`` | ``1x1 reduce -> 3x3`` | ``1x1 reduce -> 5x5`` (or two 3x3, the same
    receptive field with fewer weights, Inception-v2: ``factorize_5x5``) | ``3x3 max-pool (stride
    1) -> 1x1 projection``. Output channels: ``b1x1 + b3x3 + b5x5 + pool_proj`` in that order; the
    spatial size is unchanged. Every conv is a :class:`ConvUnit` (conv, optional norm, ReLU).
    """

    b1x1: int
    b3x3_reduce: int
    b3x3: int
    b5x5_reduce: int
    b5x5: int
    pool_proj: int
    factorize_5x5: bool = True
    norm: Any = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def out_features(self) -> int:
        return self.b1x1 + self.b3x3 + self.b5x5 + self.pool_proj

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        unit = lambda features, k, name: ConvUnit(features, k, norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        branch1 = unit(self.b1x1, 1, "b1x1")(x)
        branch3 = unit(self.b3x3, 3, "b3x3")(unit(self.b3x3_reduce, 1, "b3x3_reduce")(x))
        branch5 = unit(self.b5x5_reduce, 1, "b5x5_reduce")(x)
        if self.factorize_5x5:
            branch5 = unit(self.b5x5, 3, "b5x5_b")(unit(self.b5x5, 3, "b5x5_a")(branch5))
        else:
            branch5 = unit(self.b5x5, 5, "b5x5")(branch5)
        pooled = nn.max_pool(x, window_shape=(3, 3), strides=(1, 1), padding="SAME")
        branch_pool = unit(self.pool_proj, 1, "pool_proj")(pooled)
        return jnp.concatenate([branch1, branch3, branch5, branch_pool], axis=-1)


class ResidualBlock(nn.Module):
    """A skip connection around any body: ``y = shortcut(x) + gate * f(x)``, then ``activation``.

    ``body`` is a module *factory* (a class or ``functools.partial``), built here as the child
    ``body`` so its params nest under this block. The shortcut is the identity when ``f(x)`` has
    the shape of ``x``; otherwise a learned projection (Dense for [batch, features], a 1x1 conv,
    strided by the spatial ratio, for [batch, H, W, C]). With ``rezero`` the body is scaled by a
    learned scalar gate initialised to 0 (ReZero, Bachlechner et al. 2020), so the block starts as
    the identity (or the projection) and a deep stack starts as a shallow one. Keyword arguments
    of the call (e.g. ``deterministic``) are passed to the body.
    """

    body: Any
    rezero: bool = False
    activation: Any = None  # e.g. nn.relu, applied after the sum
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, **body_kwargs) -> jax.Array:
        y = self.body(name="body")(x, **body_kwargs)
        if self.rezero:
            y = y * self.param("gate", nn.initializers.zeros, (), self.param_dtype).astype(y.dtype)
        shortcut = x.astype(y.dtype)
        if x.shape != y.shape:
            if x.ndim == 2:
                shortcut = logical_dense(y.shape[-1], ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(x)
            elif x.ndim == 4:
                if x.shape[1] % y.shape[1] or x.shape[2] % y.shape[2] or x.shape[1] // y.shape[1] != x.shape[2] // y.shape[2]:
                    raise ValueError(f"ResidualBlock cannot project {x.shape} onto {y.shape}: spatial sizes must shrink by one integer stride")
                shortcut = logical_conv(y.shape[-1], 1, strides=x.shape[1] // y.shape[1], dtype=self.dtype, param_dtype=self.param_dtype,
                                        kernel_init=nn.initializers.lecun_normal(), name="proj")(x)
            else:
                raise ValueError(f"ResidualBlock projects rank-2 or rank-4 inputs only, got {x.shape} -> {y.shape}")
        out = shortcut + y
        return out if self.activation is None else self.activation(out)


# --------------------------------------------------------------------------------------------
# A physics layer with a hand-derived gradient: inverting the atmospheric scattering model.


def scatter(clean: jax.Array, transmission: jax.Array, airlight: jax.Array) -> jax.Array:
    """The atmospheric scattering (haze) model ``I = J t + A (1 - t)`` (Koschmieder; He et al. 2009).

    ``clean`` J [..., C] is the scene radiance, ``transmission`` t = exp(-beta * depth) the share
    of it that reaches the camera, ``airlight`` A the light the haze scatters in; all broadcast.
    """
    return clean * transmission + airlight * (1.0 - transmission)


def _sum_to_shape(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums a broadcast result's cotangent back onto an operand of ``shape`` (the transpose of broadcasting)."""
    lead = g.ndim - len(shape)
    if lead:
        g = jnp.sum(g, axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def dehaze_reference(hazy: jax.Array, transmission: jax.Array, airlight: jax.Array, t_min: float = 0.05) -> jax.Array:
    """The plain formula ``J = (I - A (1 - t)) / max(t, t_min)``, differentiated by autodiff (for tests)."""
    return (hazy - airlight * (1.0 - transmission)) / jnp.maximum(transmission, t_min)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dehaze(hazy, transmission, airlight, t_min):
    return dehaze_reference(hazy, transmission, airlight, t_min)


def _dehaze_fwd(hazy, transmission, airlight, t_min):
    clean = dehaze_reference(hazy, transmission, airlight, t_min)
    return clean, (hazy, transmission, airlight, clean)


def _dehaze_bwd(t_min, residuals, g):
    hazy, t, a, clean = residuals
    # Work in at least float32 whatever the inputs are, and cast each cotangent back at the end.
    f = jnp.promote_types(g.dtype, jnp.float32)
    g, t32, a32, j = g.astype(f), t.astype(f), a.astype(f), clean.astype(f)
    d = jnp.maximum(t32, t_min)
    g_hazy = g / d
    g_airlight = -(g * (1.0 - t32)) / d
    # dJ/dt: above the clamp J = (I - A)/t + A, so dJ/dt = -(I - A)/t^2 = (A - J)/t, written with
    # the J already computed and a single division; below it d = t_min is constant and J is
    # linear in t with slope A/t_min; at t == t_min the two one-sided slopes are averaged.
    above = (g * (a32 - j)) / d
    below = (g * a32) / d
    g_t = jnp.where(t32 > t_min, above, jnp.where(t32 < t_min, below, 0.5 * (above + below)))
    return (
        _sum_to_shape(g_hazy, hazy.shape).astype(hazy.dtype),
        _sum_to_shape(g_t, t.shape).astype(t.dtype),
        _sum_to_shape(g_airlight, a.shape).astype(a.dtype),
    )


_dehaze.defvjp(_dehaze_fwd, _dehaze_bwd)


def dehaze(hazy: jax.Array, transmission: jax.Array, airlight: jax.Array, t_min: float = 0.05) -> jax.Array:
    """Restores the scene radiance by inverting :func:`scatter`: ``J = (I - A (1 - t)) / max(t, t_min)``.

    ``hazy`` I [B, H, W, C], ``transmission`` t (e.g. [B, H, W, 1]) and ``airlight`` A (e.g.
    [B, 1, 1, C]) broadcast against each other; ``t_min`` (a Python float) bounds the division
    where the haze is so dense that almost no scene light arrives (He et al.'s t0 = 0.1).

    The gradient is a ``jax.custom_vjp`` derived by hand (dJ/dI = 1/d, dJ/dA = -(1 - t)/d,
    dJ/dt = (A - J)/t above the clamp and A/t_min below it, with d = max(t, t_min)) because it is
    numerically safer than autodiff through the clamp:

    * autodiff's quotient rule forms ``-N * d**-2`` (N = I - A (1 - t)): in float16 ``d**-2``
      overflows to inf for every d < 2**-8 (~0.004) and the gradient becomes inf/NaN even though
      the true dJ/dt is small; the hand-derived form divides once, by d, in at least float32, and
      casts back, so it is finite wherever the true gradient is representable;
    * the value at the clamp is defined deliberately: at t == t_min the one-sided slopes are
      averaged (the symmetric derivative, which central finite differences measure), and t <= 0
      is safe, whereas the equally natural ``jnp.where(t > t_min, N / t, N / t_min)`` gives NaN
      gradients at t = 0 (the untaken branch's 0 * inf);
    * broadcast operands (one A per image, one t per pixel) get their cotangents summed back.

    It is the exact derivative of the formula: the tests compare it with central finite
    differences in float64 and with ``jax.grad`` of :func:`dehaze_reference` away from the clamp.
    """
    hazy, transmission, airlight = (jnp.asarray(v) for v in (hazy, transmission, airlight))
    return _dehaze(hazy, transmission, airlight, float(t_min))

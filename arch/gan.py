"""A small StyleGAN-style GAN: mapping network -> style -> modulated synthesis, and a discriminator.

The generator maps a latent ``z`` through an MLP (the mapping network) to a style vector ``w``;
every synthesis layer starts from a learned constant and is *modulated* by an affine projection of
``w`` (per-example input-channel scales) and *demodulated* (output features renormalised to unit
expected scale), as in StyleGAN2. With the weight ``W[in, out]``, style ``s[b, in]``:

    y[b, o] = (sum_i x[b, i] s[b, i] W[i, o]) * d[b, o],   d[b, o] = rsqrt(sum_i (s[b, i] W[i, o])^2 + eps)

computed as scale-input / shared matmul-or-conv / scale-output (no per-example weights are
materialised). ``sample_shape`` picks the synthesis: ``(D,)`` points (the ring of Gaussians)
use modulated dense layers; ``(H, W, C)`` images use modulated 3x3 convs from a 4x4 constant,
doubling the resolution until H (then a linear resize to H, as two constant matmuls that export
with a symbolic batch, when H is not 4 times a power of 2). Params are ``{"generator": ..., "discriminator": ...}``: the
two param groups the trainer gives separate optimizers (``ModelSpec.param_groups``).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _lrelu(x):
    return nn.leaky_relu(x, 0.2)


class MappingNetwork(nn.Module):
    """z -> w: pixel-normalised latent through ``layers`` dense layers of width ``style_dim``."""

    style_dim: int
    layers: int

    @nn.compact
    def __call__(self, z):
        x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
        for i in range(self.layers):
            x = _lrelu(nn.Dense(self.style_dim, name=f"dense_{i}")(x))
        return x


class ModulatedLayer(nn.Module):
    """A dense (``kernel_size=0``) or ``k x k`` conv layer whose input channels are scaled per
    example by a style and whose outputs are demodulated (``demodulate=False`` for the output layer)."""

    features: int
    kernel_size: int = 0
    demodulate: bool = True
    equalized_lr: bool = False

    @nn.compact
    def __call__(self, x, w):
        in_features = x.shape[-1]
        # Style affine initialised to 1 so that at init the layer is a plain normalised layer.
        style = nn.Dense(in_features, bias_init=nn.initializers.ones, name="style")(w)
        if self.kernel_size:
            shape = (self.kernel_size, self.kernel_size, in_features, self.features)
        else:
            shape = (in_features, self.features)
        init_std = 1.0 if self.equalized_lr else 1.0 / math.sqrt(math.prod(shape[:-1]))
        kernel = self.param("kernel", nn.initializers.normal(init_std), shape)
        if self.equalized_lr:  # StyleGAN's runtime He scaling
            kernel = kernel / math.sqrt(math.prod(shape[:-1]))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.kernel_size:
            y = jax.lax.conv_general_dilated(
                x * style[:, None, None, :], kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            y = (x * style) @ kernel
        if self.demodulate:
            fan_in_axes = tuple(range(kernel.ndim - 1))
            # sum over (k, k, in) of (s_i W_kio)^2 = sum_i s_i^2 * sum_k W_kio^2
            w2 = jnp.sum(jnp.square(kernel), axis=fan_in_axes[:-1]) if self.kernel_size else jnp.square(kernel)
            demod = jax.lax.rsqrt(jnp.square(style) @ w2 + 1e-8)
            y = y * (demod[:, None, None, :] if self.kernel_size else demod)
        return y + bias


@functools.lru_cache(maxsize=None)
def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float32 weights of ``jax.image.resize(..., "linear")`` along one axis.

    Linear resize (antialiased when shrinking) is separable and linear, so it is this matrix
    applied to each spatial axis; it is read off by resizing the identity, so it is jax's own kernel.
    """
    with jax.ensure_compile_time_eval():  # a constant even when called inside jit or an export trace
        return np.asarray(jax.image.resize(jnp.eye(in_size, dtype=jnp.float32), (out_size, in_size), "linear"))


def linear_resize_square(x: jax.Array, size: int) -> jax.Array:
    """``jax.image.resize(x, (batch, size, size, C), "linear")`` of NHWC ``x`` as two constant matmuls.

    Equal to the resize to float rounding; unlike it, it exports to ONNX with a symbolic batch
    (jax2onnx's resize converter needs a constant batch).
    """
    rows = jnp.asarray(linear_resize_matrix(x.shape[1], size), x.dtype)
    cols = jnp.asarray(linear_resize_matrix(x.shape[2], size), x.dtype)
    precision = jax.lax.Precision.HIGHEST  # as jax.image.resize
    x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=precision)
    return jnp.einsum("pw,bowc->bopc", cols, x, precision=precision)


class Generator(nn.Module):
    sample_shape: tuple
    latent_dim: int
    style_dim: int
    mapping_layers: int
    width: int
    synthesis_layers: int

    @nn.compact
    def __call__(self, z):
        w = MappingNetwork(self.style_dim, self.mapping_layers, name="mapping")(z)
        batch = z.shape[0]
        if len(self.sample_shape) == 1:
            const = self.param("const", nn.initializers.normal(1.0), (self.width,))
            x = jnp.broadcast_to(const, (batch, self.width))
            for i in range(self.synthesis_layers):
                x = _lrelu(ModulatedLayer(self.width, name=f"synthesis_{i}")(x, w))
            return ModulatedLayer(self.sample_shape[0], demodulate=False, name="to_output")(x, w)
        height, _, channels = self.sample_shape
        const = self.param("const", nn.initializers.normal(1.0), (4, 4, self.width))
        x = jnp.broadcast_to(const, (batch, 4, 4, self.width))
        resolution, block = 4, 0
        while True:
            for i in range(self.synthesis_layers):
                x = _lrelu(ModulatedLayer(self.width, kernel_size=3, name=f"synthesis_{block}_{i}")(x, w))
            if resolution >= height:
                break
            # nearest-neighbour 2x upsampling, written as repeats (equal to jax.image.resize "nearest"
            # at 2x) because jax2onnx's resize needs a constant batch and the export's batch is symbolic
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
            resolution, block = 2 * resolution, block + 1
        if resolution != height:
            x = linear_resize_square(x, height)
        rgb = ModulatedLayer(channels, kernel_size=1, demodulate=False, name="to_output")(x, w)
        return nn.sigmoid(rgb)  # images live in [0, 1]


def minibatch_std(x, group_size: int = 4):
    """StyleGAN's minibatch-standard-deviation feature: within groups of ``group_size`` examples,
    the mean over features of the per-feature std, appended as one more feature. A collapsed
    generator's batch has a tell-tale low spread, so the discriminator can see mode collapse."""
    group = min(group_size, x.shape[0])
    while x.shape[0] % group:
        group -= 1
    grouped = x.reshape((group, -1) + x.shape[1:])
    std = jnp.sqrt(jnp.var(grouped, axis=0) + 1e-8)
    stat = jnp.mean(std, axis=tuple(range(1, std.ndim)), keepdims=True)  # [batch/group, 1, ...]
    stat = jnp.tile(stat, (group,) + (1,) * (x.ndim - 1))
    stat = jnp.broadcast_to(stat, x.shape[:-1] + (1,))
    return jnp.concatenate([x, stat], axis=-1)


class Discriminator(nn.Module):
    width: int
    layers: int

    @nn.compact
    def __call__(self, x):
        if x.ndim == 2:
            for i in range(self.layers):
                x = _lrelu(nn.Dense(self.width, name=f"dense_{i}")(x))
        else:
            x = x * 2.0 - 1.0
            for i in range(self.layers):
                x = _lrelu(nn.Conv(self.width * 2**i, (3, 3), strides=(2, 2) if x.shape[1] > 4 else (1, 1), name=f"conv_{i}")(x))
            x = x.reshape(x.shape[0], -1)
        x = _lrelu(nn.Dense(self.width, name="head")(minibatch_std(x)))
        return nn.Dense(1, name="logit")(x)[:, 0]


class GAN(nn.Module):
    """Generator and discriminator in one module; ``__call__`` touches both so init creates both."""

    sample_shape: tuple
    latent_dim: int
    style_dim: int
    mapping_layers: int
    width: int
    synthesis_layers: int
    disc_width: int
    disc_layers: int
    r1_gamma: float  # R1 gradient-penalty weight, read by the GAN task's loss

    def setup(self):
        self.generator = Generator(tuple(self.sample_shape), self.latent_dim, self.style_dim, self.mapping_layers,
                                   self.width, self.synthesis_layers)
        self.discriminator = Discriminator(self.disc_width, self.disc_layers)

    def generate(self, z):
        return self.generator(z)

    def discriminate(self, x):
        return self.discriminator(x)

    def __call__(self, x, deterministic: bool = True):
        """Discriminator logits of ``x`` (and of a generated batch, so init builds the generator)."""
        del deterministic
        fake = self.generator(jnp.zeros((x.shape[0], self.latent_dim), x.dtype))
        return self.discriminator(x), self.discriminator(fake)

"""Physics-based dehazing: a CNN estimates the haze, the scattering model is inverted exactly.

The atmospheric scattering model says a hazy image is ``I = J t + A (1 - t)`` (see
:func:`arch.layers.scatter`). :class:`DehazeNet` does not predict the clean image J directly: a
small dilated residual CNN estimates the transmission map t (per pixel, sigmoid) and the
atmospheric light A (per image and channel, sigmoid, from globally pooled features), and the
restoration is :func:`arch.layers.dehaze`, ``J = (I - A (1 - t)) / max(t, t_min)``, whose
gradient is derived by hand (``jax.custom_vjp``). The network only has to learn the haze, which
is smooth and low-dimensional; the physics does the rest.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import ConvUnit, ResidualBlock, dehaze, logical_conv, logical_dense


class DilatedConvPair(nn.Module):
    """Residual body: 3x3 conv (dilation ``dilation``) -> ReLU -> 3x3 conv, ``features`` channels."""

    features: int
    dilation: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = ConvUnit(self.features, 3, dilation=self.dilation, name="conv_a", **precision)(x)
        return logical_conv(self.features, 3, name="conv_b", **precision)(y)


class DehazeNet(nn.Module):
    """Maps hazy images [batch, H, W, C] in [0, 1] to restored images of the same shape (float32).

    ``dilations`` gives one residual block per entry (with the stem and the transmission conv, 1, 2, 4
    give a 25 px receptive field: a stroke pixel's transmission is read off the background around it).
    ``return_maps=True`` returns ``(restored, transmission [B, H, W, 1], airlight [B, 1, 1, C])``.
    """

    width: int
    dilations: Sequence[int]
    airlight_hidden: int
    t_min: float
    dtype: Any
    param_dtype: Any

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        problems = []
        if not 0.0 < model.t_min < 1.0:
            problems.append("model.t_min must be in (0, 1)")
        if not model.dilations or min(model.dilations) < 1:
            problems.append("model.dilations must be dilations >= 1")
        return problems

    @nn.compact
    def __call__(self, hazy: jax.Array, *, deterministic: bool = True, return_maps: bool = False):
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = hazy.astype(self.dtype)
        h = ConvUnit(self.width, 3, name="stem", **precision)(x)
        for i, dilation in enumerate(self.dilations):
            body = partial(DilatedConvPair, self.width, dilation, **precision)
            h = ResidualBlock(body, activation=nn.relu, name=f"block{i + 1}", **precision)(h)
        transmission = nn.sigmoid(logical_conv(1, 3, name="transmission", **precision)(h))

        # A is the colour of the haze itself: read it off the features and the image's own
        # brightest and average values, pooled over the whole image.
        pooled = jnp.concatenate([jnp.mean(h, (1, 2)), jnp.max(h, (1, 2)), jnp.mean(x, (1, 2)), jnp.max(x, (1, 2))], axis=-1)
        a = nn.relu(logical_dense(self.airlight_hidden, ("embed", "mlp"), name="airlight_hidden", **precision)(pooled))
        a = logical_dense(x.shape[-1], ("mlp", None), name="airlight", **precision)(a)
        airlight = nn.sigmoid(a)[:, None, None, :]

        restored = dehaze(x, transmission, airlight, self.t_min).astype(jnp.float32)
        if return_maps:
            return restored, transmission.astype(jnp.float32), airlight.astype(jnp.float32)
        return restored

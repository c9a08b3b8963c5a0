"""The classic small CNN: conv-pool-conv-pool-dense classifier."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import logical_init
from archlab.arch.mlp import activation, activation_problems
from archlab.arch.quant import conv_cls, quant_dense


class CNN(nn.Module):
    """[Conv 3x3 -> activation -> max-pool 2x2] per entry of ``channels``, then Dense, Dense head.

    ``quant="int8"``: every Conv and Dense is int8 fake-quantised (arch/quant.py), same params.
    """

    channels: Sequence[int]
    dense: int
    num_classes: int
    activation: str
    dropout_rate: float
    dtype: Any
    param_dtype: Any
    quant: str

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        problems = activation_problems(model)
        if not model.channels or min(model.channels) < 1:
            problems.append(f"model.channels must be one or more widths >= 1 (got {tuple(model.channels)})")
        return problems

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        act = activation(self.activation)
        x = x.astype(self.dtype)
        for i, features in enumerate(self.channels):
            x = conv_cls(self.quant)(
                features, kernel_size=(3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=logical_init(nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")),
                bias_init=logical_init(nn.initializers.zeros, ("conv_out",)), name=f"conv_{i}",
            )(x)
            x = nn.max_pool(act(x), window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = quant_dense(self.quant, self.dense, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="dense")(x)
        x = nn.Dropout(self.dropout_rate)(act(x), deterministic=deterministic)
        logits = quant_dense(self.quant, self.num_classes, ("mlp", "vocab"), dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        return logits.astype(jnp.float32)

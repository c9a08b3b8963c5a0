"""Multi-layer perceptron classifier: flatten, [Dense -> activation -> dropout] x N, Dense."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.quant import quant_dense

ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "silu": nn.silu, "elu": nn.elu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Maps inputs [batch, ...] to logits [batch, num_classes] (float32); ``quant="int8"`` fake-quantises every Dense."""

    hidden: Sequence[int] = (256, 256)
    num_classes: int = 10
    activation: str = "relu"
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    quant: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        act = activation(self.activation)
        for i, width in enumerate(self.hidden):
            x = quant_dense(self.quant, width, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}")(x)
            x = nn.Dropout(self.dropout_rate)(act(x), deterministic=deterministic)
        logits = quant_dense(self.quant, self.num_classes, ("mlp", "vocab"), dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        return logits.astype(jnp.float32)

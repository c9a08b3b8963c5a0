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


def activation_problems(model) -> list[str]:
    """The ``activation`` field MLP and CNN share."""
    if model.activation not in ACTIVATIONS:
        return [f"model.activation must be one of {', '.join(ACTIVATIONS)} (got {model.activation!r})"]
    return []


class MLP(nn.Module):
    """Maps inputs [batch, ...] to logits [batch, num_classes] (float32); ``quant="int8"`` fake-quantises every Dense."""

    hidden: Sequence[int]
    num_classes: int
    activation: str
    dropout_rate: float
    dtype: Any
    param_dtype: Any
    quant: str

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        return activation_problems(model)

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = x.reshape(x.shape[0], -1).astype(self.dtype)
        act = activation(self.activation)
        for i, width in enumerate(self.hidden):
            x = quant_dense(self.quant, width, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name=f"dense_{i}")(x)
            x = nn.Dropout(self.dropout_rate)(act(x), deterministic=deterministic)
        logits = quant_dense(self.quant, self.num_classes, ("mlp", "vocab"), dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        return logits.astype(jnp.float32)

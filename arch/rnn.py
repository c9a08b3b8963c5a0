"""Recurrent byte-level language models: Elman RNN, LSTM and GRU.

Cells are pure functions ``cell(params, carry, x) -> (carry, h)`` scanned with ``lax.scan``
(not ``nn.RNN``/``nn.scan``, which jax2onnx cannot export; a plain scan becomes an ONNX Loop).
The input projection of every time step is one matmul before the scan; only the recurrent
matmul runs inside it. In ``decode`` mode the carry lives in the ``cache`` collection, so the
shared sampler continues a sequence one byte at a time.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import DEFAULT_INIT, GatheredEmbed, logical_init, token_matmul

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def rnn_cell(w_h, carry, x_proj):
    h = jnp.tanh(x_proj + carry[0] @ w_h)
    return (h,), h


def lstm_cell(w_h, carry, x_proj):
    h, c = carry
    i, f, g, o = jnp.split(x_proj + h @ w_h, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)  # +1: forget-gate bias
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def gru_cell(w_h, carry, x_proj):
    (h,) = carry
    xr, xz, xn = jnp.split(x_proj, 3, axis=-1)
    hr, hz, hn = jnp.split(h @ w_h, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return (h,), h


CELLS = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}


def scan_cell(cell, w_h, carry, x_proj):
    """Runs ``cell`` over the time axis of ``x_proj`` [batch, time, gates*hidden]."""
    carry, hs = jax.lax.scan(lambda c, x: cell(w_h, c, x), carry, jnp.swapaxes(x_proj, 0, 1))
    return carry, jnp.swapaxes(hs, 0, 1)


class RecurrentLayer(nn.Module):
    kind: str
    hidden: int
    decode: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        gates = GATES[self.kind] * self.hidden
        w_x = self.param("w_x", logical_init(DEFAULT_INIT, ("embed", "mlp")), (x.shape[-1], gates), self.param_dtype)
        w_h = self.param("w_h", logical_init(nn.initializers.orthogonal(), ("embed", "mlp")), (self.hidden, gates), self.param_dtype)
        b = self.param("b", logical_init(nn.initializers.zeros, ("mlp",)), (gates,), self.param_dtype)
        x_proj = token_matmul(x, w_x, self.dtype) + b.astype(self.dtype)
        n_carry = 2 if self.kind == "lstm" else 1
        zeros = lambda: jnp.zeros((x.shape[0], self.hidden), self.dtype)
        if self.decode:
            state = [self.variable("cache", f"carry{i}", zeros) for i in range(n_carry)]
            carry, hs = scan_cell(CELLS[self.kind], w_h.astype(self.dtype), tuple(s.value for s in state), x_proj)
            for s, value in zip(state, carry):
                s.value = value
            return hs
        carry = tuple(zeros() for _ in range(n_carry))
        return scan_cell(CELLS[self.kind], w_h.astype(self.dtype), carry, x_proj)[1]


def embed_and_recur(model: nn.Module, tokens: jax.Array, *, decode: bool, deterministic: bool) -> jax.Array:
    """Byte embedding then ``model.num_layers`` recurrent layers with dropout; called inside a
    model's compact ``__call__``, so the submodules (``embed``, ``<kind>_<i>``) are that model's own."""
    if model.kind not in CELLS:
        raise ValueError(f"unknown cell {model.kind!r}; valid: {', '.join(CELLS)}")
    x = GatheredEmbed(model.vocab_size, model.embed_dim, embedding_init=logical_init(nn.initializers.normal(1.0), ("vocab", "embed")),
                 dtype=model.dtype, param_dtype=model.param_dtype, parent=model, name="embed")(tokens)
    for i in range(model.num_layers):
        x = RecurrentLayer(model.kind, model.hidden, decode, model.dtype, model.param_dtype, parent=model, name=f"{model.kind}_{i}")(x)
        x = nn.Dropout(model.dropout_rate, parent=model)(x, deterministic=deterministic)
    return x


class RecurrentLM(nn.Module):
    """Embedding -> stacked recurrent layers -> LayerNorm -> vocabulary logits (float32)."""

    kind: str
    vocab_size: int
    embed_dim: int
    hidden: int
    num_layers: int
    dropout_rate: float
    max_len: int  # the sampler's prompt window; the recurrent state itself has no context limit
    dtype: Any
    param_dtype: Any
    decode: bool = False

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        return [f"model.kind must be one of {', '.join(CELLS)} (got {model.kind!r})"] if model.kind not in CELLS else []

    @nn.compact
    def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = embed_and_recur(self, tokens, decode=self.decode, deterministic=deterministic)
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final")(x)
        w_out = self.param("unembed", logical_init(DEFAULT_INIT, ("embed", "vocab")), (self.hidden, self.vocab_size), self.param_dtype)
        return token_matmul(x, w_out, self.dtype).astype(jnp.float32)


class RecurrentClassifier(nn.Module):
    """Sequence classifier: embedding -> stacked recurrent layers -> mean and last hidden state ->
    LayerNorm -> class logits. Mean-pooling lets every step's state vote; the last state carries order."""

    kind: str
    num_classes: int
    vocab_size: int
    embed_dim: int
    hidden: int
    num_layers: int
    dropout_rate: float
    dtype: Any
    param_dtype: Any

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        return [f"model.kind must be one of {', '.join(CELLS)} (got {model.kind!r})"] if model.kind not in CELLS else []

    @nn.compact
    def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = embed_and_recur(self, tokens, decode=False, deterministic=deterministic)
        pooled = jnp.concatenate([jnp.mean(x, axis=1), x[:, -1]], axis=-1)
        pooled = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final")(pooled)
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(pooled).astype(jnp.float32)

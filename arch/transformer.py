"""Decoder-only Transformer language model (pre-LayerNorm, causal attention, GELU MLP).

Options a researcher expects: rotary or learned positions, weight tying, dropout, mixed precision
(``dtype`` for compute, ``param_dtype`` for storage), scan over layers (compile time flat in
depth), rematerialisation of blocks, and a ``decode`` mode with a KV cache for sampling.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import (
    DEFAULT_INIT,
    CausalSelfAttention,
    GatheredEmbed,
    MlpBlock,
    logical_init,
    rotary_tables,
    static_rotary_tables,
    token_matmul,
)

Dtype = Any


def _layer_norm(dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=logical_init(nn.initializers.ones, ("embed",)),
        bias_init=logical_init(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class DecoderBlock(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)). Returns ``(x, None)`` so it can be ``nn.scan``-ned.

    ``rope`` is the model's rotary (sin, cos) tables, computed once for all layers (None: learned positions).
    """

    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout_rate: float
    rotary: bool
    decode: bool
    cache_size: int
    deterministic: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, rope=None):
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = _layer_norm(self.dtype, self.param_dtype, "ln_attn")(x)
        x = x + CausalSelfAttention(
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            rotary=self.rotary,
            dropout_rate=self.dropout_rate,
            decode=self.decode,
            cache_size=self.cache_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(h, positions, self.deterministic, rope)
        h = _layer_norm(self.dtype, self.param_dtype, "ln_mlp")(x)
        x = x + MlpBlock(
            hidden_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )(h, self.deterministic)
        return x, None


class TransformerLM(nn.Module):
    """Maps int tokens [batch, length] to next-token logits [batch, length, vocab] (float32)."""

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    mlp_dim: int
    max_len: int
    dropout_rate: float
    positional: str  # "rotary" | "learned"
    tie_embeddings: bool
    scan_layers: bool
    remat: bool
    dtype: Any
    param_dtype: Any
    decode: bool = False

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        problems = []
        if model.positional not in ("rotary", "learned"):
            problems.append(f"model.positional must be 'rotary' or 'learned' (got {model.positional!r})")
        if model.num_heads < 1 or model.d_model % model.num_heads:
            problems.append("model.d_model must be divisible by model.num_heads")
        if data.seq_len > model.max_len:
            problems.append("data.seq_len must be <= model.max_len")
        return problems

    @nn.compact
    def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
        batch, length = tokens.shape
        if self.positional not in ("rotary", "learned"):
            raise ValueError(f"positional must be 'rotary' or 'learned', got {self.positional!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

        if self.decode:
            next_position = self.variable("cache", "next_position", jnp.zeros, (), jnp.int32)
            start = next_position.value
            next_position.value = start + length
        else:
            start = 0
        positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
        head_dim = self.d_model // self.num_heads
        rope = None
        if self.positional == "rotary":
            # Once per model, not per layer; without a cache the positions are 0..length-1, known
            # while tracing, so the tables are constants of the compiled program.
            rope = rotary_tables(positions, head_dim) if self.decode else static_rotary_tables(length, head_dim)

        embed = GatheredEmbed(
            self.vocab_size,
            self.d_model,
            embedding_init=logical_init(DEFAULT_INIT, ("vocab", "embed")),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embed",
        )
        x = embed(tokens)
        if self.positional == "learned":
            table = self.param(
                "position_embedding",
                logical_init(DEFAULT_INIT, (None, "embed")),
                (self.max_len, self.d_model),
                self.param_dtype,
            )
            x = x + jnp.take(table, positions, axis=0).astype(self.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)

        block = DecoderBlock
        if self.remat:
            block = nn.remat(block, prevent_cse=not self.scan_layers)
        block_kwargs = dict(
            num_heads=self.num_heads,
            head_dim=head_dim,
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            rotary=self.positional == "rotary",
            decode=self.decode,
            cache_size=self.max_len,
            deterministic=deterministic,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(**block_kwargs, name="layers")(x, positions, rope)
        else:
            for i in range(self.num_layers):
                x, _ = block(**block_kwargs, name=f"layer_{i}")(x, positions, rope)

        x = _layer_norm(self.dtype, self.param_dtype, "ln_final")(x)
        if self.tie_embeddings:
            logits = token_matmul(x, embed.embedding.T, self.dtype)
        else:
            unembed = self.param(
                "unembed", logical_init(DEFAULT_INIT, ("embed", "vocab")), (self.d_model, self.vocab_size), self.param_dtype
            )
            logits = token_matmul(x, unembed, self.dtype)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)

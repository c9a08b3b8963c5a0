"""A small Inception classifier (GoogLeNet-style parallel branches, with optional skip connections).

stem 3x3 conv -> stages of :class:`~arch.layers.InceptionBlock` (each wrapped in a
:class:`~arch.layers.ResidualBlock` when ``residual``, Inception-ResNet style) with a 2x2
max-pool between stages -> global average pool -> dropout -> Dense head. Branch widths are
``branch_widths`` (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) at the first stage and
double at each later stage. BatchNorm (``batch_norm``) keeps its running statistics in the
``batch_stats`` collection, which the trainer carries in ``TrainState.model_state``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import ConvUnit, InceptionBlock, ResidualBlock, logical_dense


class InceptionNet(nn.Module):
    """Maps images [batch, H, W, C] to logits [batch, num_classes] (float32)."""

    num_classes: int
    stem_features: int
    stages: Sequence[int]  # Inception blocks per stage; a 2x2 max-pool between stages
    branch_widths: Sequence[int]
    factorize_5x5: bool
    residual: bool
    batch_norm: bool
    bn_momentum: float
    dropout_rate: float
    dtype: Any
    param_dtype: Any

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        problems = []
        if len(model.branch_widths) != 6 or min(model.branch_widths, default=0) < 1:
            problems.append("model.branch_widths must be 6 widths >= 1 (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)")
        if not model.stages or min(model.stages) < 1:
            problems.append("model.stages must be block counts >= 1")
        return problems

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        if len(self.branch_widths) != 6:
            raise ValueError(f"branch_widths needs 6 widths (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), got {tuple(self.branch_widths)}")
        norm = None
        if self.batch_norm:
            norm = partial(nn.BatchNorm, use_running_average=deterministic, momentum=self.bn_momentum, epsilon=1e-5,
                           dtype=self.dtype, param_dtype=self.param_dtype)
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvUnit(self.stem_features, 3, norm=norm, name="stem", **precision)(x.astype(self.dtype))
        for stage, blocks in enumerate(self.stages):
            if stage > 0:
                x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
            widths = [w * 2**stage for w in self.branch_widths]
            for i in range(blocks):
                block = partial(InceptionBlock, *widths, factorize_5x5=self.factorize_5x5, norm=norm, **precision)
                name = f"stage{stage + 1}_block{i + 1}"
                x = ResidualBlock(block, **precision, name=name)(x) if self.residual else block(name=name)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        logits = logical_dense(self.num_classes, ("embed", "vocab"), name="head", **precision)(x)
        return logits.astype(jnp.float32)

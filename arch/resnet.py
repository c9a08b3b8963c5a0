"""ResNet-18/34/50 (He et al. 2016): BasicBlock or Bottleneck stages, BatchNorm, projection shortcuts.

BatchNorm running statistics live in the ``batch_stats`` collection, which the trainer keeps in
``TrainState.model_state`` (updated in training, frozen in evaluation) and saves in checkpoints.
``quant="int8"`` fake-quantises every conv and the head (arch/quant.py; BatchNorm stays float).
``stem="cifar"`` (3x3 conv, no max-pool) suits 32 px images; ``stem="imagenet"`` is the original
7x7/2 conv + 3x3/2 max-pool. ``width`` scales every stage (64 is the paper's).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import logical_init
from archlab.arch.quant import conv_cls, quant_dense

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}

_conv_init = logical_init(nn.initializers.kaiming_normal(), (None, None, "conv_in", "conv_out"))


class BasicBlock(nn.Module):
    """Two 3x3 convs; the shortcut is a 1x1 projection when shape changes."""

    features: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), name="conv2")(y)
        y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)  # zero-init last BN: blocks start as identity
        if x.shape != y.shape:
            x = self.conv(self.features, (1, 1), (self.strides, self.strides), name="proj")(x)
            x = self.norm(name="proj_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4); projection shortcut when shape changes."""

    features: int
    strides: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm(name="bn1")(self.conv(self.features, (1, 1), name="conv1")(x)))
        y = nn.relu(self.norm(name="bn2")(self.conv(self.features, (3, 3), (self.strides, self.strides), name="conv2")(y)))
        y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(self.conv(self.features * 4, (1, 1), name="conv3")(y))
        if x.shape != y.shape:
            x = self.norm(name="proj_bn")(self.conv(self.features * 4, (1, 1), (self.strides, self.strides), name="proj")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Maps images [batch, H, W, C] to logits [batch, num_classes] (float32)."""

    depth: int
    num_classes: int
    width: int
    stem: str
    bn_momentum: float
    dtype: Any
    param_dtype: Any
    quant: str

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        problems = []
        if model.depth not in STAGE_SIZES:
            problems.append(f"model.depth must be one of {', '.join(map(str, sorted(STAGE_SIZES)))} (got {model.depth})")
        if model.stem not in ("cifar", "imagenet"):
            problems.append(f"model.stem must be 'cifar' or 'imagenet' (got {model.stem!r})")
        if model.width < 1:
            problems.append("model.width must be >= 1")
        return problems

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        if self.depth not in STAGE_SIZES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth}")
        conv = partial(conv_cls(self.quant), use_bias=False, padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_conv_init)
        norm = partial(
            nn.BatchNorm, use_running_average=deterministic, momentum=self.bn_momentum, epsilon=1e-5,
            dtype=self.dtype, param_dtype=self.param_dtype,
        )
        block = Bottleneck if self.depth == 50 else BasicBlock

        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = nn.relu(norm(name="stem_bn")(conv(self.width, (7, 7), (2, 2), name="stem_conv")(x)))
            x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        elif self.stem == "cifar":
            x = nn.relu(norm(name="stem_bn")(conv(self.width, (3, 3), name="stem_conv")(x)))
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {self.stem!r}")

        for stage, blocks in enumerate(STAGE_SIZES[self.depth]):
            for i in range(blocks):
                strides = 2 if stage > 0 and i == 0 else 1
                x = block(self.width * 2**stage, strides, conv, norm, name=f"stage{stage + 1}_block{i + 1}")(x)
        x = jnp.mean(x, axis=(1, 2))
        logits = quant_dense(self.quant, self.num_classes, ("embed", "vocab"), dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        return logits.astype(jnp.float32)

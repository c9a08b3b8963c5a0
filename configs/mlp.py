"""Multi-layer perceptron on the embedded 8x8 digits (``--model=mlp``). No args."""

from __future__ import annotations

import ml_collections

from archlab.configs.base import PRECISION, base_config, choose

ARGS: tuple[str, ...] = ()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    choose(arg, ARGS)
    c = base_config()
    c.model_name = "mlp"
    c.model = ml_collections.ConfigDict(dict(
        hidden=(256, 256), num_classes=10, activation="relu", dropout_rate=0.1, quant="none", **PRECISION))
    c.data.val_fraction = 0.2
    c.train.steps = 1500
    c.train.batch_size = 64
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 50
    c.train.weight_decay = 1e-4
    c.train.log_every = 50
    c.train.eval_every = 250
    c.checkpoint.every = 500
    c.checkpoint.keep = 2
    return c

"""Inception network on the embedded digits at 16 px (``--model=inception``). No args."""

from __future__ import annotations

import ml_collections

from archlab.configs.base import PRECISION, base_config, choose

ARGS: tuple[str, ...] = ()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    choose(arg, ARGS)
    c = base_config()
    c.model_name = "inception"
    # branch_widths: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj at stage 1 (doubled per stage).
    c.model = ml_collections.ConfigDict(dict(
        num_classes=10, stem_features=16, stages=(1, 1), branch_widths=(8, 8, 16, 4, 8, 8), factorize_5x5=True,
        residual=True, batch_norm=True, bn_momentum=0.9, dropout_rate=0.2, **PRECISION))
    c.data.val_fraction = 0.2
    c.data.image_size = 16
    c.train.steps = 600
    c.train.batch_size = 64
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 50
    c.train.weight_decay = 5e-4
    c.train.log_every = 50
    c.train.eval_every = 200
    c.checkpoint.every = 200
    c.checkpoint.keep = 2
    return c

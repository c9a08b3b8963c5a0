"""One NAS-Bench-201 cell (e.g. found by launch.nas) trained fully (``--model=nas_cell``). No args;
the default genotype is a strong all-3x3-conv cell."""

from __future__ import annotations

import ml_collections

from archlab.configs.base import base_config, choose

ARGS: tuple[str, ...] = ()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    choose(arg, ARGS)
    c = base_config()
    c.model_name = "nas_cell"
    c.model = ml_collections.ConfigDict(dict(
        genotype="|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        channels=16, num_classes=10))
    c.data.val_fraction = 0.2
    c.data.image_size = 16
    c.train.steps = 1000
    c.train.batch_size = 64
    c.train.learning_rate = 1e-2
    c.train.warmup_steps = 50
    c.train.weight_decay = 0.0
    c.train.log_every = 50
    c.train.eval_every = 250
    c.checkpoint.every = 500
    c.checkpoint.keep = 2
    return c

"""Dehazing network (``--model=dehaze``): synthetic haze over the digits at 16 px. No args."""

from __future__ import annotations

import ml_collections

from archlab.configs.base import PRECISION, base_config, choose

ARGS: tuple[str, ...] = ()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    choose(arg, ARGS)
    c = base_config()
    c.model_name = "dehaze"
    c.model = ml_collections.ConfigDict(dict(width=32, dilations=(1, 2, 4), airlight_hidden=32, t_min=0.05, **PRECISION))
    c.data.val_fraction = 0.2
    c.data.image_size = 16
    c.train.steps = 1000
    c.train.batch_size = 32
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 50
    c.train.weight_decay = 0.0
    c.train.log_every = 50
    c.train.eval_every = 250
    c.checkpoint.every = 500
    c.checkpoint.keep = 2
    return c

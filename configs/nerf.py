"""NeRF on the procedural scene (``--model=nerf``). No args."""

from __future__ import annotations

import ml_collections

from archlab.configs.base import PRECISION, base_config, choose

ARGS: tuple[str, ...] = ()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    choose(arg, ARGS)
    c = base_config()
    c.model_name = "nerf"
    # near/far bound the samples along each ray and background is the grey level composited behind
    # them: both match the procedural scene (cameras at radius 4, white background; train/data/nerf_scene.py).
    c.model = ml_collections.ConfigDict(dict(
        num_layers=4, width=64, pos_frequencies=8, dir_frequencies=2, num_coarse=24, num_fine=32,
        near=2.5, far=5.5, background=1.0, **PRECISION))
    # Random rays of 64 training views at 32x32 (data.image_size is the render resolution). Measured on
    # held-out views: lr 1e-2 beat 5e-3 and 2e-2; at equal rays seen, batch 256 beat 512.
    c.data.image_size = 32
    c.train.steps = 2000
    c.train.batch_size = 256
    c.train.learning_rate = 1e-2
    c.train.warmup_steps = 50
    c.train.weight_decay = 0.0
    c.train.log_every = 50
    c.train.eval_every = 500
    c.checkpoint.every = 500
    c.checkpoint.keep = 2
    return c

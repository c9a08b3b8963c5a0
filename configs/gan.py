"""StyleGAN-style GAN (``--model=gan``).

Args: ``ring`` (default; 2-D points from a ring of Gaussians, generated fresh every step) and
``digits`` (the 8x8 digits images resized to 16 px). ``--model=gan --config.data.dataset=digits``
applies the same ``digits`` values (``DATASET_DEFAULTS``), then the other overrides.
"""

from __future__ import annotations

import ml_collections

from archlab.configs.base import base_config, choose

ARGS = ("ring", "digits")

# data.dataset -> the values that suit it, by section (read by train.config.apply_overrides too).
DATASET_DEFAULTS: dict[str, dict[str, dict]] = {
    "digits": {
        "data": dict(dataset="digits", image_size=16, eval_samples=512),
        "model": dict(width=32, synthesis_layers=1, disc_width=32, disc_layers=2, r1_gamma=1.0),
        "train": dict(steps=3000, batch_size=64, learning_rate=2e-3, log_every=50, eval_every=500),
        "checkpoint": dict(every=500, keep=2),
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    dataset = choose(arg, ARGS)
    c = base_config()
    c.model_name = "gan"
    # sample_shape () is filled from the data (points (2,) or images (H, W, 1)) by ModelSpec.from_data.
    c.model = ml_collections.ConfigDict(dict(
        sample_shape=(), latent_dim=32, style_dim=64, mapping_layers=3, width=64, synthesis_layers=2,
        disc_width=64, disc_layers=3, r1_gamma=0.1))
    c.data.eval_samples = 2048  # samples per evaluation
    c.data.val_fraction = 0.2
    t = c.train
    t.steps = 10000
    t.batch_size = 128
    t.learning_rate = 3e-3
    t.warmup_steps = 50
    t.weight_decay = 0.0
    t.b1 = 0.5
    t.b2 = 0.99
    t.grad_clip = 0.0
    t.min_lr_ratio = 0.05
    t.log_every = 100
    t.eval_every = 1000
    c.checkpoint.every = 1000
    c.checkpoint.keep = 2
    for section, values in DATASET_DEFAULTS.get(dataset, {}).items():
        c[section].update(values)
    return c

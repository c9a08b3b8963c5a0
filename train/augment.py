"""Image augmentation inside the jitted train step (``train.augment``, ``train.augment_pad``).

Random shifts (zero-pad by ``pad`` pixels, crop back at a random offset: the classic pad-and-crop)
and random horizontal flips, per example, drawn from the step's rng: the same (batch, rng) always
gives the same images, so a resumed run sees exactly the augmentations an uninterrupted one does,
and there is no host randomness and no extra data pipeline. Labels and shapes are untouched.
Flips suit natural images (CIFAR); for digits use ``shift`` (a mirrored 2 or 7 is not a digit).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

MODES = ("none", "shift", "flip", "shift_flip")


def config_problems(train_config) -> list[str]:
    t = train_config
    if t.augment not in MODES:
        return [f"train.augment must be one of {', '.join(MODES)} (got {t.augment!r})"]
    if t.augment_pad < 1:
        return [f"train.augment_pad must be >= 1 pixel (got {t.augment_pad})"]
    return []


def random_shift(images: jax.Array, rng: jax.Array, pad: int) -> jax.Array:
    """Each image [H, W, C] of ``images`` [B, H, W, C] moved by up to ``pad`` pixels each way, zero-filled."""
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * pad + 1)
    crop = lambda image, off: jax.lax.dynamic_slice(image, (off[0], off[1], 0), (h, w, image.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def random_flip(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Each image mirrored left-right with probability 1/2."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def augment_images(images: jax.Array, rng: jax.Array, mode: str, pad: int = 2) -> jax.Array:
    shift_rng, flip_rng = jax.random.split(rng)
    if mode in ("shift", "shift_flip"):
        images = random_shift(images, shift_rng, pad)
    if mode in ("flip", "shift_flip"):
        images = random_flip(images, flip_rng)
    return images


def from_config(train_config) -> Callable | None:
    """``augment(batch, rng) -> batch`` for the train step (images in ``batch["inputs"]``), or None."""
    mode, pad = train_config.augment, int(train_config.augment_pad)
    if mode == "none":
        return None

    def augment(batch: dict, rng: jax.Array) -> dict:
        return dict(batch, inputs=augment_images(batch["inputs"], rng, mode, pad))

    return augment


def check_inputs(train_config, example_input, task: str) -> str | None:
    """Why ``train.augment`` cannot apply to this model's inputs (None when it can)."""
    if train_config.augment == "none":
        return None
    if task != "classification" or getattr(example_input, "ndim", 0) != 4:
        shape = tuple(getattr(example_input, "shape", ()))
        return f"train.augment={train_config.augment} needs image classification inputs [batch, height, width, channels]; this model's task is {task} with inputs of shape {shape}"
    return None

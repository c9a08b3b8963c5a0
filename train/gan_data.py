"""GAN data: the ring of 8 Gaussians (generated) and digit images, plus fixed evaluation latents.

The ring is the standard mode-collapse probe (Metz et al. 2017, "Unrolled GANs"): 8 isotropic
Gaussians of std ``RING_STD`` on a circle of radius ``RING_RADIUS``. Training samples are a pure
function of (seed, batch position), so the iterator checkpoints like every other one. Evaluation
pairs fixed latents (the same every evaluation, so sample quality is compared on equal terms) with
held-out real samples for the discriminator's loss.
"""

from __future__ import annotations

import numpy as np

from train.data import ArrayIterator, Dataset, DataError, PositionIterator, padded_eval_batches

RING_MODES = 8
RING_RADIUS = 2.0
RING_STD = 0.02
_EVAL_SEED = 7_777


def ring_centers() -> np.ndarray:
    angles = 2 * np.pi * np.arange(RING_MODES) / RING_MODES
    return (RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], -1)).astype(np.float32)


def ring_samples(rng: np.random.Generator, n: int) -> np.ndarray:
    modes = rng.integers(0, RING_MODES, size=n)
    return (ring_centers()[modes] + RING_STD * rng.standard_normal((n, 2))).astype(np.float32)


class RingIterator(PositionIterator):
    """Fresh ring samples every batch: ``{"inputs": float32 [batch, 2]}``."""

    def batch_at(self, position: int) -> dict:
        rows = ring_samples(np.random.default_rng([self.seed, position]), self.batch_size)
        return {"inputs": self._local_rows(rows)}


def _eval_batches(real: np.ndarray, latent_dim: int, count: int, batch_size: int, limit: int) -> list:
    latents = np.random.default_rng(_EVAL_SEED).standard_normal((count, latent_dim)).astype(np.float32)
    real = real[np.arange(count) % len(real)]
    return padded_eval_batches({"latents": latents, "inputs": real}, batch_size, limit)


def ring_dataset(config, shard: int, num_shards: int) -> Dataset:
    t = config.train
    if config.data.path:
        raise DataError("data.dataset=ring is generated; data.path is not used (use --config.data.dataset=digits for images)")
    held_out = ring_samples(np.random.default_rng(_EVAL_SEED + 1), config.data.eval_samples)
    return Dataset(
        train=RingIterator(t.batch_size, config.seed, shard=shard, num_shards=num_shards),
        eval_batches=_eval_batches(held_out, config.model.latent_dim, config.data.eval_samples, t.batch_size, t.eval_batches),
        example_input=held_out[:1],
        source="ring of 8 Gaussians (generated)",
        description=f"{RING_MODES} modes, radius {RING_RADIUS}, std {RING_STD}; {config.data.eval_samples:,} samples per evaluation",
        held_out_name="samples",
        extras={"kind": "ring", "centers": ring_centers(), "std": RING_STD},
    )


def digits_dataset(config, shard: int, num_shards: int) -> Dataset:
    """Digit images in [0, 1] (all classes, labels unused); ``data.path`` may name an .npz instead."""
    from train.image_data import first_train_images, load_images

    t = config.train
    images = load_images(config.data.path, config.data.image_size, config.data.val_fraction)
    images = first_train_images(images, config.data.get("train_examples", 0))
    return Dataset(
        train=ArrayIterator({"inputs": images.x_train}, t.batch_size, config.seed, shard=shard, num_shards=num_shards),
        eval_batches=_eval_batches(images.x_test, config.model.latent_dim, min(config.data.eval_samples, 4 * len(images.x_test)),
                                   t.batch_size, t.eval_batches),
        example_input=images.x_train[:1],
        source=images.source,
        description=f"{len(images.x_train):,} train images of {images.x_train.shape[1:]}",
        held_out_name="samples",
        extras={"kind": "images"},
    )

"""GAN data: the ring of 8 Gaussians (generated) and digit images, plus fixed evaluation latents.

The ring is the standard mode-collapse probe (Metz et al. 2017, "Unrolled GANs"): 8 isotropic
Gaussians of std ``RING_STD`` on a circle of radius ``RING_RADIUS``. Training samples are a pure
function of (seed, batch position), so the iterator checkpoints like every other one. Evaluation
pairs fixed latents (the same every evaluation, so sample quality is compared on equal terms) with
held-out real samples for the discriminator's loss.
"""

from __future__ import annotations

import numpy as np

from archlab.train.data.dataset import Dataset
from archlab.train.data.images import first_train_images, load_images
from archlab.train.data.pipeline import EvalBatches, TrainStream, array_stream, local_rows
from archlab.train.errors import DataError

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


def ring_stream(batch_size: int, seed: int, *, shard: int = 0, num_shards: int = 1, workers: int = 0, prefetch: int = 2) -> TrainStream:
    """Fresh ring samples every batch: ``{"inputs": float32 [batch, 2]}``, a pure function of (seed, batch)."""
    def batch_fn(position: int) -> dict:
        rows = ring_samples(np.random.default_rng([seed, position]), batch_size)
        return {"inputs": local_rows(rows, shard, num_shards)}

    return TrainStream(batch_fn, name="ring of 8 Gaussians", workers=workers, prefetch=prefetch)


def _eval_batches(real: np.ndarray, latent_dim: int, count: int, batch_size: int, limit: int) -> list:
    latents = np.random.default_rng(_EVAL_SEED).standard_normal((count, latent_dim)).astype(np.float32)
    real = real[np.arange(count) % len(real)]
    return EvalBatches.of_arrays({"latents": latents, "inputs": real}, batch_size, limit)


def ring_dataset(config, shard: int, num_shards: int) -> Dataset:
    t = config.train
    if config.data.path:
        raise DataError("data.dataset=ring is generated; data.path is not used (use --config.data.dataset=digits for images)")
    held_out = ring_samples(np.random.default_rng(_EVAL_SEED + 1), config.data.eval_samples)
    return Dataset(
        train=ring_stream(t.batch_size, config.seed, shard=shard, num_shards=num_shards, workers=config.data.workers, prefetch=config.data.prefetch),
        eval_batches=_eval_batches(held_out, config.model.latent_dim, config.data.eval_samples, t.batch_size, t.eval_batches),
        example_input=held_out[:1],
        source="ring of 8 Gaussians (generated)",
        description=f"{RING_MODES} modes, radius {RING_RADIUS}, std {RING_STD}; {config.data.eval_samples:,} samples per evaluation",
        held_out_name="samples",
        extras={"kind": "ring", "centers": ring_centers(), "std": RING_STD},
    )


def digits_dataset(config, shard: int, num_shards: int) -> Dataset:
    """Digit images in [0, 1] (all classes, labels unused); ``data.path`` may name an .npz instead."""
    t = config.train
    images = load_images(config.data.path, config.data.image_size, config.data.val_fraction, config.data.format)
    images = first_train_images(images, config.data.get("train_examples", 0))
    return Dataset(
        train=array_stream({"inputs": images.x_train}, t.batch_size, config.seed, shard=shard, num_shards=num_shards,
                           workers=config.data.workers, prefetch=config.data.prefetch),
        eval_batches=_eval_batches(images.x_test, config.model.latent_dim, min(config.data.eval_samples, 4 * len(images.x_test)),
                                   t.batch_size, t.eval_batches),
        example_input=images.x_train[:1],
        source=images.source,
        description=f"{len(images.x_train):,} train images of {images.x_train.shape[1:]}",
        held_out_name="samples",
        extras={"kind": "images"},
    )

"""Per-channel image normalisation (``data.normalize``): the statistics of the train split, applied
to every split, on for image files and off for the embedded digits by default."""

from __future__ import annotations

import numpy as np

from archlab.train.errors import DataError

NORMALIZE_CHOICES = ("auto", "on", "off")


def wants_normalization(d, is_file_source: bool) -> bool:
    """``data.normalize``: auto is on for image files (CIFAR-10, records, folders, .npz), off for the embedded digits."""
    if d.normalize not in NORMALIZE_CHOICES:
        raise DataError(f"data.normalize={d.normalize!r}; valid: {', '.join(NORMALIZE_CHOICES)}")
    return d.normalize == "on" or (d.normalize == "auto" and is_file_source)


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32 [C]) of images [N, H, W, C]; std floored at 1e-3."""
    mean = images.mean(axis=(0, 1, 2), dtype=np.float64)
    std = images.std(axis=(0, 1, 2), dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def describe_statistics(mean: np.ndarray, std: np.ndarray) -> str:
    fmt = lambda values: "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
    return f"mean {fmt(mean)}, std {fmt(std)}"

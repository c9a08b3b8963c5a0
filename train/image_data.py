"""Image classification data: scikit-learn's digits by default, ``.npz`` and CIFAR-10 files.

Images come out as float32 NHWC in [0, 1], resized to ``data.image_size`` (0 keeps the native
size), labels as int32. The digits test split is fixed (it does not move with ``config.seed``),
so accuracies of different seeds and models are measured on the same 20 % of the images.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import zipfile

import numpy as np

from train.data import DataError

_SPLIT_SEED = 20_240_601
CIFAR_RECORD = 1 + 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float) -> tuple:
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    if size <= 0 or x.shape[1:3] == (size, size):
        return x
    import jax
    import jax.numpy as jnp

    shape = (x.shape[0], size, size, x.shape[3])
    return np.asarray(jax.image.resize(jnp.asarray(x), shape, method="linear"), np.float32)


def digits() -> tuple[np.ndarray, np.ndarray, str]:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package, no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return x, bunch.target.astype(np.int32), "digits (scikit-learn, 1,797 8x8 images)"


def npz_file(path: str) -> tuple[np.ndarray, np.ndarray, str]:
    """An ``.npz`` with arrays ``x`` [N, H, W] or [N, H, W, C] and integer ``y`` [N]."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path!r} must hold arrays 'x' (images) and 'y' (labels); it has {sorted(f.files)}")
            x, y = f["x"], f["y"]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path!r} is not a readable .npz file ({e})") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path!r}: expected x [N,H,W(,C)] and integer y [N], got x {x.shape} and y {y.shape} {y.dtype}")
    x = x.astype(np.float32)
    if x.max() > 1.0:
        x = x / 255.0
    return x, y.astype(np.int32), path


def cifar10_binary(path: str) -> tuple[np.ndarray, np.ndarray, str]:
    """CIFAR-10 binary batches: one ``.bin`` file or a directory of ``*_batch*.bin`` files."""
    files = sorted(glob.glob(os.path.join(path, "*.bin"))) if os.path.isdir(path) else [path]
    if not files:
        raise DataError(f"{path!r} holds no CIFAR-10 .bin batches")
    xs, ys = [], []
    for name in files:
        raw = np.fromfile(name, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise DataError(f"{name!r} is not a CIFAR-10 binary batch (size {raw.size} is not a multiple of {CIFAR_RECORD})")
        records = raw.reshape(-1, CIFAR_RECORD)
        if records[:, 0].max() > 9:
            raise DataError(f"{name!r} is not a CIFAR-10 binary batch (label byte above 9)")
        ys.append(records[:, 0].astype(np.int32))
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0)
    return np.concatenate(xs), np.concatenate(ys), f"CIFAR-10 binary batches at {path}"


def load_images(path: str, image_size: int, test_fraction: float) -> ImageSplits:
    """Loads ``path`` by its format (``.npz``, CIFAR-10 ``.bin`` or directory), digits if empty."""
    if not path:
        x, y, source = digits()
    elif not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    elif path.endswith(".npz"):
        x, y, source = npz_file(path)
    elif path.endswith(".bin") or os.path.isdir(path):
        x, y, source = cifar10_binary(path)
    else:
        raise DataError(f"data file {path!r} has an unknown image format; valid: .npz (x, y arrays), CIFAR-10 .bin batches or a directory of them")
    if len(x) < 2:
        raise DataError(f"{path!r} holds {len(x)} images; need at least 2")
    x = _resize(x, image_size)
    x_train, y_train, x_test, y_test = _split(x, y, test_fraction)
    num_classes = int(max(y.max() + 1, 2))
    return ImageSplits(x_train, y_train, x_test, y_test, num_classes, source)

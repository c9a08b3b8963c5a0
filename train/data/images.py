"""Image data: scikit-learn's digits by default, ``.npz`` and CIFAR-10 (binary or python batches); procedural haze.

Images come out as float32 NHWC in [0, 1], resized to ``data.image_size`` (0 keeps the native
size), labels as int32. The digits test split is fixed (it does not move with ``config.seed``),
so accuracies of different seeds and models are measured on the same 20 % of the images.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pickle
import zipfile

import numpy as np

from archlab.arch.layers import scatter
from archlab.train.data.pipeline import TrainStream, array_stream, local_rows
from archlab.train.errors import DataError

_SPLIT_SEED = 20_240_601
CIFAR_RECORD = 1 + 32 * 32 * 3
CIFAR_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str


def split_train_test(x: np.ndarray, y: np.ndarray, test_fraction: float) -> tuple:
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


def out_of_range_labels(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """The distinct labels outside [0, ``num_classes``) (``None``: only the negative ones), sorted."""
    labels = np.asarray(labels)
    bad = labels < 0 if num_classes is None else (labels < 0) | (labels >= num_classes)
    return np.unique(labels[bad])


def describe_labels(values: np.ndarray, limit: int = 8) -> str:
    """``"-1, 10, 12"``, or the first ``limit`` and how many more."""
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def check_labels(labels: np.ndarray, num_classes: int | None, name: str, why: str = "") -> None:
    """DataError naming ``name``, the labels outside [0, ``num_classes``) and the range (``None``:
    only negative labels are refused, any class count is valid); ``why`` ends the message."""
    bad = out_of_range_labels(labels, num_classes)
    if bad.size:
        valid = f"[0, {num_classes})" if num_classes is not None else "[0, num_classes)"
        raise DataError(f"{name!r} has label(s) {describe_labels(bad)} outside the valid range {valid}{why}")


def digits() -> tuple[np.ndarray, np.ndarray, str]:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped inside the package, no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    return x, bunch.target.astype(np.int32), "digits (scikit-learn, 1,797 8x8 images)"


def _npz_images(path: str, f, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = f[x_name], f[y_name]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path!r}: expected {x_name} [N,H,W(,C)] and integer {y_name} [N], got {x_name} {x.shape} and {y_name} {y.shape} {y.dtype}")
    return x, y.astype(np.int32)


def npz_file(path: str) -> tuple:
    """An ``.npz`` with arrays ``x`` [N, H, W] or [N, H, W, C] and integer ``y`` [N]; optional
    ``x_test`` / ``y_test`` are its own test split. Pixel values above 1 are read as 0..255."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path!r} must hold arrays 'x' (images) and 'y' (labels); it has {sorted(f.files)}")
            x, y = _npz_images(path, f, "x", "y")
            x_test, y_test = _npz_images(path, f, "x_test", "y_test") if "x_test" in f and "y_test" in f else (None, None)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path!r} is not a readable .npz file ({e})") from None
    scale = 255.0 if max(x.max(), x_test.max() if x_test is not None else 0) > 1.0 else 1.0
    as_float = lambda a: None if a is None else a.astype(np.float32) / scale
    return as_float(x), y, as_float(x_test), y_test, path


def _read_cifar_binary(name: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(name, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD:
        raise DataError(f"{name!r} is not a CIFAR-10 binary batch (size {raw.size} is not a multiple of {CIFAR_RECORD})")
    records = raw.reshape(-1, CIFAR_RECORD)
    check_labels(records[:, 0], CIFAR_CLASSES, name, " of CIFAR-10's 10 classes (is it a CIFAR-10 binary batch?)")
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0, records[:, 0].astype(np.int32)


def _is_test_file(name: str) -> bool:
    return os.path.basename(name).startswith("test_batch")


def _train_and_test(files: list[str], read, path: str, kind: str) -> tuple:
    """(x, y, x_test, y_test) of CIFAR batch files: test_batch* is the test split, the rest train."""
    train_files = [f for f in files if not _is_test_file(f)]
    test_files = [f for f in files if _is_test_file(f)]
    if not train_files:
        raise DataError(f"{path!r} holds no CIFAR-10 training batches (data_batch_1..5), only {', '.join(map(os.path.basename, files))}")
    stack = lambda names: tuple(np.concatenate(parts) for parts in zip(*(read(n) for n in names))) if names else (None, None)
    (x, y), (x_test, y_test) = stack(train_files), stack(test_files)
    return x, y, x_test, y_test, f"CIFAR-10 {kind} batches at {path}"


def cifar10_binary(path: str) -> tuple:
    """CIFAR-10 binary batches: one ``.bin`` file or a directory of ``*.bin`` files (``test_batch.bin`` is the test split)."""
    files = sorted(glob.glob(os.path.join(path, "*.bin"))) if os.path.isdir(path) else [path]
    if not files:
        raise DataError(f"{path!r} holds no CIFAR-10 .bin batches")
    if not os.path.isdir(path):
        x, y = _read_cifar_binary(path)
        return x, y, None, None, f"CIFAR-10 binary batch {path}"
    return _train_and_test(files, _read_cifar_binary, path, "binary")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Reads CIFAR's pickled dicts but refuses every global except numpy's array rebuilders, so a
    crafted file cannot run code (checkpoints never use pickle; this is only the data format)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


CIFAR_PYTHON_NAMES = ("data_batch_", "test_batch")


def _is_cifar_python_file(name: str) -> bool:
    base = os.path.basename(name)
    return base.startswith(CIFAR_PYTHON_NAMES) and not base.endswith(".bin")


def _read_cifar_python(name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(name, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"], np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError, OSError) as e:
        raise DataError(f"{name!r} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{name!r} is not a CIFAR-10 python batch (data {data.shape}, labels {labels.shape})")
    check_labels(labels, CIFAR_CLASSES, name, " of CIFAR-10's 10 classes")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0, labels.astype(np.int32)


def cifar10_python(path: str) -> tuple:
    """CIFAR-10 "python version" batches (``data_batch_1..5`` train, ``test_batch`` test): one file or their directory."""
    if not os.path.isdir(path):
        x, y = _read_cifar_python(path)
        return x, y, None, None, f"CIFAR-10 python batch {path}"
    files = sorted(f for f in glob.glob(os.path.join(path, "*")) if _is_cifar_python_file(f))
    return _train_and_test(files, _read_cifar_python, path, "python")


# data.format values read into memory here; the streaming image formats are in train/data/image_records.py.
IN_MEMORY_FORMATS = ("npz", "cifar10")
STREAMING_FORMATS = ("tfrecord", "array_record", "image_folder")


def detect_image_format(path: str, fmt: str = "auto") -> str:
    """``data.format`` for an image ``path``: the value given, or one picked by name/contents."""
    if fmt != "auto" or not path:
        return fmt
    name = os.path.basename(path.rstrip("/"))
    if name.endswith(".npz"):
        return "npz"
    if "tfrecord" in name:
        return "tfrecord"
    if "array_record" in name or name.endswith(".arecord"):
        return "array_record"
    if os.path.isdir(path):
        entries = os.listdir(path)
        if any("tfrecord" in e for e in entries):
            return "tfrecord"
        if any("array_record" in e for e in entries):
            return "array_record"
        if any(_is_cifar_python_file(e) or e.endswith(".bin") for e in entries):
            return "cifar10"
        if any(os.path.isdir(os.path.join(path, e)) for e in entries):
            return "image_folder"
    if name.endswith(".bin") or _is_cifar_python_file(name):
        return "cifar10"
    return fmt


def load_images(path: str, image_size: int, test_fraction: float, fmt: str = "auto") -> ImageSplits:
    """Loads ``path`` into memory by its format (``.npz``, CIFAR-10 binary or python batches), digits if empty.

    A source that ships a test split keeps it (CIFAR-10's ``test_batch``, an ``.npz`` with
    ``x_test``/``y_test``); otherwise a fixed ``test_fraction`` of the images is the test split. The
    training split comes in a fixed random order (the same for every seed)."""
    fmt = detect_image_format(path, fmt)
    x_test = y_test = None
    if not path and fmt != "auto":
        raise DataError(f"data.format={fmt} needs data.path (the embedded digits are read when both are left at their defaults)")
    if not path:
        x, y, source = digits()
    elif not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    elif fmt == "npz":
        x, y, x_test, y_test, source = npz_file(path)
    elif fmt == "cifar10" and (_is_cifar_python_file(path) or (os.path.isdir(path) and any(_is_cifar_python_file(f) for f in os.listdir(path)))):
        x, y, x_test, y_test, source = cifar10_python(path)
    elif fmt == "cifar10":
        x, y, x_test, y_test, source = cifar10_binary(path)
    else:
        raise DataError(f"data file {path!r} has an unknown image format; valid: .npz (x, y arrays), CIFAR-10 .bin "
                        "or python batches (data_batch_N, test_batch) or a directory of them, TFRecord / ArrayRecord files of "
                        "tf.train.Example images, an image folder (class_name/*.jpg|png); or set data.format "
                        f"(got {fmt}; valid: {', '.join(('auto',) + IN_MEMORY_FORMATS + STREAMING_FORMATS)})")
    if len(x) < 2:
        raise DataError(f"{path!r} holds {len(x)} images; need at least 2")
    if x_test is None:
        x_train, y_train, x_test, y_test = split_train_test(_resize(x, image_size), y, test_fraction)
    else:
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
        x_train, y_train = _resize(x[order], image_size), y[order]
        x_test = _resize(x_test, image_size)
    num_classes = int(max(y_train.max() + 1, y_test.max() + 1, 2))
    return ImageSplits(x_train, y_train, x_test, y_test, num_classes, source)


def parse_classes(spec: str) -> tuple[int, ...]:
    """``data.classes``: ``"0-4"`` or ``"5,7,9"`` (mixable: ``"0-2,7"``) -> sorted distinct labels.

    Raises ValueError naming the accepted forms; at least 2 labels, all >= 0.
    """
    labels = set()
    try:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            low, sep, high = part.partition("-")
            low, high = int(low), int(high) if sep else int(low)
            if low < 0 or high < low:
                raise ValueError
            labels.update(range(low, high + 1))
    except ValueError:
        labels = set()
    if len(labels) < 2:
        raise ValueError(f"data.classes must name at least 2 labels >= 0 as a range like 0-4 or a list like 1,3,5 (got {spec!r})")
    return tuple(sorted(labels))


def select_classes(images: ImageSplits, spec: str) -> ImageSplits:
    """Only the images of the labels ``spec`` names (see :func:`parse_classes`), relabelled 0..k-1
    in label order; the train/test split stays the fixed one, so test images never move to training."""
    if not spec:
        return images
    classes = parse_classes(spec)
    present = np.unique(np.concatenate([images.y_train, images.y_test]))
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"data.classes={spec!r} names labels {missing} that the data does not have (its labels: {present.min()}..{present.max()})")
    lookup = np.full(int(max(present.max(), max(classes))) + 1, -1, np.int32)
    lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)

    def keep(x, y):
        rows = lookup[y] >= 0
        return x[rows], lookup[y[rows]]

    x_train, y_train = keep(images.x_train, images.y_train)
    x_test, y_test = keep(images.x_test, images.y_test)
    if len(x_test) == 0:
        raise DataError(f"data.classes={spec!r} leaves no test images; choose more classes or a larger data.val_fraction")
    source = f"{images.source}, classes {spec} relabelled 0..{len(classes) - 1}"
    return ImageSplits(x_train, y_train, x_test, y_test, len(classes), source)


def hold_out_validation(images: ImageSplits, count: int) -> tuple[ImageSplits, tuple[np.ndarray, np.ndarray] | None]:
    """The last ``count`` training images as a validation split ``(x, y)`` (0: none, ``None``), and
    the splits without them. Taken from the train split, so the test split stays the fixed one and
    a model chosen on validation is scored on images nothing looked at."""
    if count == 0:
        return images, None
    available = len(images.x_train)
    if count >= available:
        raise DataError(f"data.validation_examples={count} leaves no training images (the training split has {available:,}); "
                        f"use 1..{available - 1} or 0 for none")
    keep = available - count
    rest = dataclasses.replace(images, x_train=images.x_train[:keep], y_train=images.y_train[:keep],
                               source=f"{images.source}, last {count:,} training images held out for validation")
    return rest, (images.x_train[keep:], images.y_train[keep:])


def first_train_images(images: ImageSplits, count: int, *, held_out: int = 0) -> ImageSplits:
    """Only the first ``count`` training images (0: all of them). The train split is already in a
    fixed random order, so these are a random sample, the same for every seed; the test split is
    untouched, so runs with different counts are scored on the same images. ``held_out``: how many
    training images a validation split already took (named in the error)."""
    if count == 0:
        return images
    available = len(images.x_train)
    if count > available:
        after = f" after data.validation_examples={held_out}" if held_out else ""
        raise DataError(f"data.train_examples={count} but the training split has {available:,} images{after}; use 1..{available} or 0 for all")
    source = f"{images.source}, first {count:,} training images"
    return dataclasses.replace(images, x_train=images.x_train[:count], y_train=images.y_train[:count], source=source)


# --- procedural haze for the restoration task: I = J t + A (1 - t), t = exp(-beta * depth).

HAZE_BETA = (0.4, 2.0)  # scattering coefficient per image: t >= exp(-2) = 0.135 where depth is 1
HAZE_AIRLIGHT = (0.6, 1.0)  # atmospheric light per image (grey; +-5 % per channel for colour images)
_HAZE_TEST_SEED = _SPLIT_SEED + 1


def _bilinear_matrix(size: int, grid: int) -> np.ndarray:
    """[size, grid] weights that upsample ``grid`` samples to ``size`` by linear interpolation."""
    position = np.linspace(0.0, grid - 1, size)
    lower = np.minimum(np.floor(position).astype(int), grid - 2)
    frac = position - lower
    weights = np.zeros((size, grid))
    weights[np.arange(size), lower] = 1.0 - frac
    weights[np.arange(size), lower + 1] += frac
    return weights


def smooth_depth(rng: np.random.Generator, n: int, height: int, width: int, grid: int = 3) -> np.ndarray:
    """``n`` smooth random depth maps [n, height, width] in [0, 1]: a linear ramp in a random
    direction (a receding ground plane) plus a bilinearly upsampled ``grid`` x ``grid`` random
    field, rescaled per image to a random range [near, far] with near in [0, 0.3], far in [0.6, 1]."""
    ys, xs = np.meshgrid(np.linspace(0.0, 1.0, height), np.linspace(0.0, 1.0, width), indexing="ij")
    angle = rng.uniform(0.0, 2 * np.pi, (n, 1, 1))
    ramp = np.cos(angle) * xs + np.sin(angle) * ys
    field = np.einsum("hi,nij,wj->nhw", _bilinear_matrix(height, grid), rng.random((n, grid, grid)), _bilinear_matrix(width, grid))
    depth = ramp + rng.uniform(0.5, 1.5, (n, 1, 1)) * field
    low, high = depth.min(axis=(1, 2), keepdims=True), depth.max(axis=(1, 2), keepdims=True)
    unit = (depth - low) / np.maximum(high - low, 1e-6)
    near, far = rng.uniform(0.0, 0.3, (n, 1, 1)), rng.uniform(0.6, 1.0, (n, 1, 1))
    return near + (far - near) * unit


def haze_parameters(rng: np.random.Generator, n: int, height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Random haze for ``n`` images: transmission t [n, H, W, 1] = exp(-beta * depth) with beta per
    image in HAZE_BETA, and atmospheric light A [n, 1, 1, C] in HAZE_AIRLIGHT (float32)."""
    beta = rng.uniform(*HAZE_BETA, (n, 1, 1))
    transmission = np.exp(-beta * smooth_depth(rng, n, height, width))[..., None]
    airlight = rng.uniform(*HAZE_AIRLIGHT, (n, 1, 1, 1))
    if channels > 1:
        airlight = np.clip(airlight * (1.0 + rng.uniform(-0.05, 0.05, (n, 1, 1, channels))), 0.0, 1.0)
    return transmission.astype(np.float32), airlight.astype(np.float32)


def apply_haze(clean: np.ndarray, transmission: np.ndarray, airlight: np.ndarray) -> np.ndarray:
    """The atmospheric scattering model ``I = J t + A (1 - t)`` (``arch.layers.scatter``, the formula the
    dehaze layer inverts), in numpy float32 (in [0, 1] when J, t, A are)."""
    return np.asarray(scatter(clean, transmission, airlight), np.float32)


def synthesize_haze(clean: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hazes clean images [N, H, W, C] in [0, 1] deterministically from ``seed``: (hazy, t, A)."""
    n, height, width, channels = clean.shape
    transmission, airlight = haze_parameters(np.random.default_rng(seed), n, height, width, channels)
    return apply_haze(clean, transmission, airlight), transmission, airlight


def hazy_test_split(clean: np.ndarray) -> np.ndarray:
    """The held-out images with fixed haze (independent of ``config.seed``, like the split)."""
    return synthesize_haze(clean, _HAZE_TEST_SEED)[0]


def hazy_stream(clean: np.ndarray, batch_size: int, seed: int, *, shard: int = 0, num_shards: int = 1, workers: int = 0, prefetch: int = 2):
    """Batches ``{"inputs": hazy, "targets": clean}`` of the training images, hazed afresh every
    batch: the haze of batch ``i`` is a pure function of (seed, i) and of the row's place in the
    global batch, so resuming and any number of processes see the same data."""
    images = array_stream({"targets": clean}, batch_size, seed, shard=shard, num_shards=num_shards)
    _, height, width, channels = clean.shape

    def batch_fn(position: int) -> dict:
        targets = images.batch_at(position)["targets"]
        rng = np.random.default_rng([seed, position, 1])
        transmission, airlight = (local_rows(a, shard, num_shards) for a in haze_parameters(rng, batch_size, height, width, channels))
        return {"inputs": apply_haze(targets, transmission, airlight), "targets": targets}

    stream = TrainStream(batch_fn, name=f"hazed images: {len(clean):,}", workers=workers, prefetch=prefetch)
    stream.size = len(clean)
    return stream

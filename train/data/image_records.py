"""Image classification streamed from files: TFRecord / ArrayRecord of ``tf.train.Example`` and image folders.

Nothing is read up front but the file index: each batch's records are read, decoded, resized to
``data.image_size`` and normalised inside the grain pipeline (in ``data.workers`` processes when
set), so memory does not grow with the dataset. A shipped test split (``*test*`` files, a
``test/`` folder; else ``*validation*`` / ``val/``) is the test split; otherwise a fixed
``data.val_fraction`` of the training records is. ``data.validation_examples`` come from the
training split only.
"""

from __future__ import annotations

import numpy as np

from archlab.train.data.dataset import Dataset
from archlab.train.data.image_folder import image_folder_splits, resize_image
from archlab.train.data.images import detect_image_format
from archlab.train.data.normalize import channel_statistics, describe_statistics, wants_normalization
from archlab.train.data.pipeline import EvalBatches, record_stream
from archlab.train.data.records import ArrayRecordSource, TFRecordSource, record_split_files
from archlab.train.errors import DataError

_SPLIT_SEED = 20_240_601  # the fixed order of the training records (train/data/images.py uses the same)
_STATISTICS_SAMPLE = 1024  # training images that measure the per-channel mean/std
RECORD_EXTENSIONS = {"tfrecord": ("tfrecord",), "array_record": ("array_record", "arecord")}


class Subset:
    """``source`` restricted to ``indices`` (a random-access source itself)."""

    def __init__(self, source, indices: np.ndarray, name: str):
        self.source, self.indices, self.name = source, np.asarray(indices, np.int64), name

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[index])]

    def __repr__(self) -> str:
        return f"Subset({self.name}, {len(self.indices):,} of {self.source!r})"


def open_splits(path: str, fmt: str) -> tuple[dict, tuple[str, ...]]:
    """{"train": source, "test": source (or absent)} and the class names (image folders) of ``path``."""
    if fmt == "image_folder":
        splits = image_folder_splits(path)
        names = tuple(splits["train"].class_names)
    else:
        reader = TFRecordSource if fmt == "tfrecord" else ArrayRecordSource
        splits = {split: reader(files) for split, files in record_split_files(path, RECORD_EXTENSIONS[fmt]).items() if files}
        names = ()
    if "test" not in splits and "validation" in splits:
        splits["test"] = splits.pop("validation")
    return splits, names


class ImageReader:
    """Reads records ``rows`` of a source as a batch ``{"inputs": float32 [n, S, S, C], "labels": int32 [n]}``:
    decode, resize to ``image_size``, scale to [0, 1], normalise, check the labels."""

    def __init__(self, source, image_size: int, num_classes: int, mean=None, std=None, where: str = ""):
        self.source, self.image_size, self.num_classes = source, image_size, num_classes
        self.where = where or repr(source)
        self.mean, self.std = mean, std

    def __call__(self, rows: np.ndarray) -> dict:
        records = [self.source[int(i)] for i in rows]
        images = [resize_image(r["image"], self.image_size) for r in records]
        if len({im.shape for im in images}) > 1:
            shapes = sorted({im.shape for im in images})
            raise DataError(f"{self.where!r} holds images of different sizes ({shapes[0]}, {shapes[-1]}, ...); set data.image_size to resize them")
        x = np.stack(images).astype(np.float32) / 255.0
        if self.mean is not None:
            x = (x - self.mean) / self.std
        labels = np.asarray([r["label"] for r in records], np.int64)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise DataError(f"{self.where!r} has label(s) {', '.join(map(str, np.unique(bad)[:8]))} outside the valid range "
                            f"[0, {self.num_classes}) (model.num_classes={self.num_classes})")
        return {"inputs": x.astype(np.float32), "labels": labels.astype(np.int32)}


def streamed_classification_dataset(config, shard: int, num_shards: int) -> Dataset:
    t, d = config.train, config.data
    fmt = detect_image_format(d.path, d.format)
    if d.get("classes", ""):
        raise DataError(f"data.classes is read only for in-memory image data (digits, .npz, CIFAR-10), not data.format={fmt}")
    splits, class_names = open_splits(d.path, fmt)
    train = splits["train"]
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(train))
    if "test" in splits:
        test, test_note = splits["test"], "shipped test split"
    else:
        n_test = max(1, int(round(len(train) * d.val_fraction)))
        test, test_note = Subset(train, np.sort(order[:n_test]), "test"), f"test split: a fixed {d.val_fraction:.0%} of the records"
        order = order[n_test:]
    n_val = d.get("validation_examples", 0)
    if n_val >= len(order):
        raise DataError(f"data.validation_examples={n_val} leaves no training images (the training split has {len(order):,})")
    validation = Subset(train, order[len(order) - n_val :], "validation") if n_val else None
    order = order[: len(order) - n_val]
    if d.get("train_examples", 0):
        if d.train_examples > len(order):
            raise DataError(f"data.train_examples={d.train_examples} but the training split has {len(order):,} images; use 1..{len(order)} or 0 for all")
        order = order[: d.train_examples]
    train = Subset(train, order, "train")
    num_classes = len(class_names) if class_names else config.model.get("num_classes", 0)
    if class_names and "num_classes" in config.model and len(class_names) > config.model.num_classes:
        raise DataError(f"{d.path!r} has {len(class_names)} classes but model.num_classes={config.model.num_classes}; "
                        f"set --config.model.num_classes={len(class_names)}")
    num_classes = config.model.get("num_classes", num_classes)
    plain = ImageReader(train, d.image_size, num_classes, where=d.path)
    mean = std = None
    normalization = ""
    if wants_normalization(d, True):  # the only up-front read: a sample of the (fixed-order) training images
        sample = plain(np.arange(min(len(train), _STATISTICS_SAMPLE)))["inputs"]
        mean, std = channel_statistics(sample)
        normalization = f"; normalised per channel ({describe_statistics(mean, std)} of {len(sample):,} training images)"
    read = lambda source: ImageReader(source, d.image_size, num_classes, mean, std, where=d.path)
    test_batches = EvalBatches(read(test), len(test), t.batch_size)
    eval_batches = EvalBatches(read(validation), len(validation), t.batch_size, t.eval_batches) if validation else \
        EvalBatches(read(test), len(test), t.batch_size, t.eval_batches)
    example = read(train)(np.arange(1))["inputs"]
    shape = f"images of {example.shape[1:]}, {num_classes} classes"
    counts = f"{len(train):,} train / " + (f"{len(validation):,} validation / " if validation else "") + f"{len(test):,} test"
    return Dataset(
        train=record_stream(read(train), len(train), t.batch_size, config.seed, shard=shard, num_shards=num_shards,
                            name=f"{fmt} {d.path}", workers=d.workers, prefetch=d.prefetch, shuffle="grain"),
        eval_batches=eval_batches,
        example_input=example,
        source=f"{fmt} at {d.path} ({test_note})",
        description=f"{counts} {shape}, decoded in the pipeline{normalization}",
        num_classes=num_classes,
        held_out_name="validation" if validation else "test",
        test_batches=test_batches if validation else None,
    )

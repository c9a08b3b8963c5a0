"""Datasets and deterministic, checkpointable batch iterators.

The embedded text corpus is the stdlib's ``pydoc_data.topics`` (the Python reference's help
topics, ~465 K bytes), split by topic so validation text comes from topics never trained on. Any
UTF-8/bytes file can replace it through ``data.path``; its last ``val_fraction`` is held out.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import zlib
from typing import Callable

import numpy as np


class DataError(ValueError):
    """Missing, empty or unusable input data."""


@dataclasses.dataclass(frozen=True)
class TextSplits:
    train: np.ndarray  # uint8 bytes
    validation: np.ndarray
    source: str


def _is_validation_topic(name: str) -> bool:
    # crc32 is stable across Python runs and platforms (unlike hash()); ~1 topic in 10.
    return zlib.crc32(name.encode("utf-8")) % 10 == 0


def embedded_text_splits() -> TextSplits:
    """The stdlib help-topics corpus as bytes, split train/validation by topic name."""
    from pydoc_data.topics import topics

    train_parts, val_parts = [], []
    for name in sorted(topics):
        text = topics[name].encode("utf-8") + b"\n"
        (val_parts if _is_validation_topic(name) else train_parts).append(text)
    to_array = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8)
    return TextSplits(to_array(train_parts), to_array(val_parts), "pydoc_data.topics (stdlib)")


def file_text_splits(path: str, val_fraction: float, min_len: int) -> TextSplits:
    """A text/bytes file split into head (train) and tail (validation)."""
    if not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise DataError(f"data path {path!r} is a directory; give a text file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"data file {path!r} cannot be read: {e.strerror}") from None
    if not raw:
        raise DataError(f"data file {path!r} is empty")
    data = np.frombuffer(raw, dtype=np.uint8)
    n_val = int(len(data) * val_fraction)
    if len(data) - n_val < min_len or n_val < min_len:
        raise DataError(
            f"data file {path!r} has {len(data)} bytes; need at least {int(np.ceil(min_len / min(val_fraction, 1 - val_fraction)))} "
            f"so both splits hold one sequence of data.seq_len+1={min_len} bytes"
        )
    return TextSplits(data[: len(data) - n_val], data[len(data) - n_val :], path)


def load_text(path: str, val_fraction: float, seq_len: int) -> TextSplits:
    if path:
        return file_text_splits(path, val_fraction, seq_len + 1)
    return embedded_text_splits()


class PositionIterator(abc.ABC):
    """A batch iterator whose whole state is ``position``: batch ``i`` is a pure function of
    (seed, i), so a checkpointed position resumes exactly the batches an uninterrupted run sees.
    ``shard`` / ``num_shards`` select this process's rows of the global batch (multi-host).
    """

    def __init__(self, batch_size: int, seed: int, *, shard: int = 0, num_shards: int = 1):
        if batch_size % num_shards:
            raise DataError(f"batch_size {batch_size} is not divisible by {num_shards} processes")
        self.batch_size = batch_size
        self.seed = seed
        self.shard = shard
        self.num_shards = num_shards
        self.position = 0

    def get_state(self) -> dict:
        return {"position": int(self.position)}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])

    @staticmethod
    def state_problem(state: dict, step: int) -> str | None:
        """Why a saved ``get_state()`` cannot be the position after ``step`` steps (one batch a step), or None."""
        position = state.get("position") if isinstance(state, dict) else None
        if not isinstance(position, int) or isinstance(position, bool):
            return f"'position' is {position!r}, not an integer"
        if position != step:
            return f"'position' is {position} but the state is at step {step}"
        return None

    def _local_rows(self, rows: np.ndarray) -> np.ndarray:
        per = self.batch_size // self.num_shards
        return rows[self.shard * per : (self.shard + 1) * per]

    @abc.abstractmethod
    def batch_at(self, position: int) -> dict:
        """The (process-local) batch number ``position``, as a dict of numpy arrays."""

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.batch_at(self.position)
        self.position += 1
        return batch


class ArrayIterator(PositionIterator):
    """Shuffled mini-batches of aligned arrays (e.g. images and labels), a new order each epoch."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int, *, shard: int = 0, num_shards: int = 1):
        super().__init__(batch_size, seed, shard=shard, num_shards=num_shards)
        self.arrays = arrays
        self.size = len(next(iter(arrays.values())))
        if self.size < batch_size:
            raise DataError(f"{self.size} training examples are fewer than train.batch_size={batch_size}")
        self.batches_per_epoch = self.size // batch_size

    def batch_at(self, position: int) -> dict:
        epoch, index = divmod(position, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        rows = self._local_rows(order[index * self.batch_size : (index + 1) * self.batch_size])
        return {name: array[rows] for name, array in self.arrays.items()}


class TextWindowIterator(PositionIterator):
    """Random windows of ``seq_len + 1`` bytes; batch ``i`` is a pure function of (seed, i).

    Batches are ``{"tokens": int32 [batch, seq_len + 1]}``.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, seed: int, *, shard: int = 0, num_shards: int = 1):
        super().__init__(batch_size, seed, shard=shard, num_shards=num_shards)
        if len(data) < seq_len + 1:
            raise DataError(f"text of {len(data)} bytes is shorter than one window of {seq_len + 1}")
        self.data = data
        self.seq_len = seq_len
        self._window = np.arange(seq_len + 1)

    def batch_at(self, position: int) -> dict:
        rng = np.random.default_rng([self.seed, position])
        starts = self._local_rows(rng.integers(0, len(self.data) - self.seq_len, size=self.batch_size))
        return {"tokens": self.data[starts[:, None] + self._window].astype(np.int32)}


def eval_windows(data: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows of ``seq_len + 1`` covering the split (each byte predicted once)."""
    n = (len(data) - 1) // seq_len
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    return data[idx].astype(np.int32)


def padded_eval_batches(arrays: dict[str, np.ndarray], batch_size: int, limit: int = 0) -> list[tuple[dict, np.ndarray]]:
    """The whole split in fixed-size batches; the last is zero-padded, with weight 0 on padding."""
    size = len(next(iter(arrays.values())))
    batches = []
    for start in range(0, size, batch_size):
        n = min(batch_size, size - start)
        weights = np.zeros((batch_size,), np.float32)
        weights[:n] = 1.0
        batch = {}
        for name, array in arrays.items():
            chunk = array[start : start + n]
            if n < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
            batch[name] = chunk
        batches.append((batch, weights))
    return batches[:limit] if limit > 0 else batches


@dataclasses.dataclass
class Dataset:
    """What the loop needs from a task's data: a checkpointable train iterator, the held-out
    split as padded batches (and a test split when that one is a validation split), an example
    input for init, and a description for the log.
    ``extras`` carries what a task's plots need (e.g. held-out views, fixed latents)."""

    train: PositionIterator
    eval_batches: list
    example_input: np.ndarray
    source: str
    description: str
    num_classes: int = 0
    held_out_name: str = "validation"  # what the evaluation split is called in the log
    # The test split when ``eval_batches`` is a validation split (data.validation_examples): scored
    # once, at the end of training, on the state early stopping kept (else the last one).
    test_batches: list | None = None
    extras: dict = dataclasses.field(default_factory=dict)


def _lm_dataset(config, shard: int, num_shards: int) -> Dataset:
    t, d = config.train, config.data
    splits = load_text(d.path, d.val_fraction, d.seq_len)
    return Dataset(
        train=TextWindowIterator(splits.train, t.batch_size, d.seq_len, config.seed, shard=shard, num_shards=num_shards),
        eval_batches=padded_eval_batches({"tokens": eval_windows(splits.validation, d.seq_len)}, t.batch_size, t.eval_batches),
        example_input=np.zeros((1, d.seq_len), np.int32),
        source=splits.source,
        description=f"{len(splits.train):,} train / {len(splits.validation):,} validation bytes",
    )


def check_class_labels(config, images) -> None:
    """Refuses labels a classifier cannot learn (DataError naming the file, the labels and the valid
    range): negative ones always, and those >= model.num_classes unless data.classes relabels them."""
    from train.image_data import check_labels, out_of_range_labels

    labels = np.concatenate([images.y_train, images.y_test])
    limit = config.model.num_classes if "num_classes" in config.model and not config.data.get("classes", "") else None
    why = " (labels are class indices)"
    if limit is not None and out_of_range_labels(labels, limit).max(initial=-1) >= limit:
        why = (f": the data has {images.num_classes} classes but model.num_classes={limit}; set "
               f"--config.model.num_classes={images.num_classes} or fix the labels")
    check_labels(labels, limit, config.data.path or images.source, why)


def _classification_dataset(config, shard: int, num_shards: int) -> Dataset:
    from train.image_data import first_train_images, hold_out_validation, load_images, select_classes

    t, d = config.train, config.data
    images = load_images(d.path, d.image_size, d.val_fraction)
    check_class_labels(config, images)
    images = select_classes(images, d.get("classes", ""))
    images, validation = hold_out_validation(images, d.get("validation_examples", 0))
    images = first_train_images(images, d.get("train_examples", 0), held_out=d.get("validation_examples", 0))
    test = {"inputs": images.x_test, "labels": images.y_test}
    shape = f"images of {images.x_train.shape[1:]}, {images.num_classes} classes"
    if validation is None:  # the periodic evaluations read the test split
        eval_batches, test_batches, held_out = padded_eval_batches(test, t.batch_size, t.eval_batches), None, "test"
        description = f"{len(images.x_train):,} train / {len(images.x_test):,} test {shape}"
    else:
        eval_batches = padded_eval_batches({"inputs": validation[0], "labels": validation[1]}, t.batch_size, t.eval_batches)
        test_batches, held_out = padded_eval_batches(test, t.batch_size), "validation"
        description = f"{len(images.x_train):,} train / {len(validation[0]):,} validation / {len(images.x_test):,} test {shape}"
    return Dataset(
        train=ArrayIterator({"inputs": images.x_train, "labels": images.y_train}, t.batch_size, config.seed, shard=shard, num_shards=num_shards),
        eval_batches=eval_batches,
        example_input=images.x_train[:1],
        source=images.source,
        description=description,
        num_classes=images.num_classes,
        held_out_name=held_out,
        test_batches=test_batches,
    )


def _nerf_dataset(config, shard: int, num_shards: int) -> Dataset:
    """The procedural NeRF scene: random rays of its training views, every ray of its held-out views."""
    from train.scene import build_nerf_dataset

    return build_nerf_dataset(config, shard, num_shards)


def _restoration_dataset(config, shard: int, num_shards: int) -> Dataset:
    """Procedurally hazed images (digits by default, or data.path): hazed afresh every training
    batch, with fixed haze on the held-out split; batches ``{"inputs": hazy, "targets": clean}``."""
    from train.image_data import HazyImageIterator, first_train_images, hazy_test_split, load_images

    t, d = config.train, config.data
    images = first_train_images(load_images(d.path, d.image_size, d.val_fraction), d.get("train_examples", 0))
    hazy_test = hazy_test_split(images.x_test)
    return Dataset(
        train=HazyImageIterator(images.x_train, t.batch_size, config.seed, shard=shard, num_shards=num_shards),
        eval_batches=padded_eval_batches({"inputs": hazy_test, "targets": images.x_test}, t.batch_size, t.eval_batches),
        example_input=images.x_train[:1],
        source=f"{images.source}, hazed procedurally (I = J t + A (1 - t))",
        description=f"{len(images.x_train):,} train images (new haze every batch) / {len(images.x_test):,} test images "
                    f"(fixed haze) of {images.x_train.shape[1:]}",
        held_out_name="test",
        extras={"plot_inputs": hazy_test[:8], "plot_targets": images.x_test[:8]},
    )


# The recurrent classifiers' task: which help topic a window of bytes comes from. These 8 large
# topics share no text with each other (checked: no 64-byte shingle of one is in another; e.g.
# "specialnames" was left out because it contains "attribute-access" and "customization").
TOPIC_CLASSES = ("compound", "types", "formatstrings", "string-methods", "typesseq", "debugger", "typesmapping", "assignment")


class ClassWindowIterator(PositionIterator):
    """Class-balanced random windows: each row picks a class uniformly, then a window of its text.

    Batches are ``{"inputs": int32 [batch, seq_len], "labels": int32 [batch]}``.
    """

    def __init__(self, texts: list[np.ndarray], batch_size: int, seq_len: int, seed: int, *, shard: int = 0, num_shards: int = 1):
        super().__init__(batch_size, seed, shard=shard, num_shards=num_shards)
        self.texts, self.seq_len = texts, seq_len
        self._window = np.arange(seq_len)

    def batch_at(self, position: int) -> dict:
        rng = np.random.default_rng([self.seed, position])
        labels = rng.integers(0, len(self.texts), size=self.batch_size)
        starts = (rng.random(self.batch_size) * np.array([len(self.texts[c]) - self.seq_len + 1 for c in labels])).astype(np.int64)
        rows = self._local_rows(np.arange(self.batch_size))
        tokens = np.stack([self.texts[labels[r]][starts[r] + self._window] for r in rows]).astype(np.int32)
        return {"inputs": tokens, "labels": labels[rows].astype(np.int32)}


def labelled_texts(path: str) -> tuple[list[str], list[np.ndarray], str]:
    """(class names, texts as bytes arrays, source): the embedded topics, or one class per file of
    a directory ``path`` (sorted by file name)."""
    if not path:
        from pydoc_data.topics import topics

        texts = [np.frombuffer(topics[name].encode("utf-8"), np.uint8) for name in TOPIC_CLASSES]
        return list(TOPIC_CLASSES), texts, "pydoc_data.topics (stdlib): which of 8 help topics a window comes from"
    if not os.path.isdir(path):
        raise DataError(f"data.path {path!r} is not a directory; for data.dataset=topics give a directory with one text file per class")
    names = sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)) and not f.startswith("."))
    if len(names) < 2:
        raise DataError(f"data.path {path!r} holds {len(names)} files; need one text file per class, at least 2")
    texts = []
    for name in names:
        with open(os.path.join(path, name), "rb") as f:
            texts.append(np.frombuffer(f.read(), np.uint8))
    return [os.path.splitext(n)[0] for n in names], texts, path


def _topics_dataset(config, shard: int, num_shards: int) -> Dataset:
    """Each class's text: the head (1 - val_fraction) trains, the tail is cut into non-overlapping test windows."""
    t, d = config.train, config.data
    names, texts, source = labelled_texts(d.path)
    train_texts, test_inputs, test_labels = [], [], []
    for label, (name, text) in enumerate(zip(names, texts)):
        cut = len(text) - int(len(text) * d.val_fraction)
        if cut < d.seq_len or len(text) - cut < d.seq_len:
            raise DataError(f"class {name!r} has {len(text)} bytes; each split needs at least data.seq_len={d.seq_len}")
        train_texts.append(text[:cut])
        windows = eval_windows(text[cut:], d.seq_len - 1)  # non-overlapping windows of seq_len bytes
        test_inputs.append(windows)
        test_labels.append(np.full(len(windows), label, np.int32))
    test_x, test_y = np.concatenate(test_inputs), np.concatenate(test_labels)
    return Dataset(
        train=ClassWindowIterator(train_texts, t.batch_size, d.seq_len, config.seed, shard=shard, num_shards=num_shards),
        eval_batches=padded_eval_batches({"inputs": test_x, "labels": test_y}, t.batch_size, t.eval_batches),
        example_input=np.zeros((1, d.seq_len), np.int32),
        source=source,
        description=f"{len(names)} classes ({', '.join(names)}); {len(test_x):,} held-out windows of {d.seq_len} bytes from each text's tail",
        num_classes=len(names),
        held_out_name="test",
    )


# task -> {data.dataset name -> builder(config, shard, num_shards) -> Dataset}; the first name is
# the task's default. A task's builders may read data.path (a user file) as their loader allows.
DATASETS: dict[str, dict[str, Callable]] = {
    "lm": {"corpus": _lm_dataset},
    "classification": {"images": _classification_dataset, "topics": _topics_dataset},
    "restoration": {"hazy_digits": _restoration_dataset},
    "nerf": {"scene": _nerf_dataset},
    "gan": {"ring": lambda *a: _gan_data().ring_dataset(*a), "digits": lambda *a: _gan_data().digits_dataset(*a)},
}


def _gan_data():
    from train import gan_data

    return gan_data


def dataset_names(task: str) -> tuple[str, ...]:
    return tuple(DATASETS.get(task, {}))


# Data options only some datasets read: set for any other, they are an error, not a silent no-op.
DATASET_OPTIONS = {
    "classes": ("images",),
    "train_examples": ("images", "hazy_digits", "digits"),
    "validation_examples": ("images",),
}


def make_dataset(task: str, config, *, shard: int = 0, num_shards: int = 1) -> Dataset:
    """Builds the dataset a task trains on from ``config.data`` (raises DataError on bad input)."""
    builders = DATASETS.get(task)
    if not builders:
        raise ValueError(f"no dataset for task {task!r}")
    name = config.data.dataset or next(iter(builders))
    if name not in builders:
        raise DataError(f"unknown data.dataset {name!r} for this model; valid: {', '.join(builders)}")
    for option, readers in DATASET_OPTIONS.items():
        if config.data.get(option, 0) and name not in readers:
            raise DataError(f"data.{option} is read only by the {' / '.join(readers)} data; this run's data is {name!r} "
                            f"(--model={config.model_name}); leave it unset")
    return builders[name](config, shard, num_shards)

"""The data package: every dataset as a grain pipeline (``pipeline.py``).

One file per source: ``text.py`` (the embedded corpus, text files and ``.bin`` token files, read
window by window), ``topics.py`` (the recurrent classifiers' windows), ``images.py`` (digits,
``.npz``, CIFAR-10 in memory; procedural haze), ``image_records.py`` (TFRecord / ArrayRecord /
image folders, streamed), ``gan.py`` (the ring of Gaussians and digit images), ``nerf_scene.py``
(the ray-cast scene); the readers ``records.py`` (with ``example_format.py``), ``image_folder.py`` and
``token_file.py``; and ``tokenizer.py``, ``normalize.py``. This module is the registry on top: task ->
dataset name -> builder.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from archlab.train.data import gan as gan_data, topics
from archlab.train.data.dataset import Dataset
from archlab.train.data.image_records import streamed_classification_dataset
from archlab.train.data.images import (
    STREAMING_FORMATS,
    check_labels,
    detect_image_format,
    first_train_images,
    hazy_stream,
    hazy_test_split,
    hold_out_validation,
    load_images,
    out_of_range_labels,
    select_classes,
)
from archlab.train.data.nerf_scene import build_nerf_dataset
from archlab.train.data.normalize import NORMALIZE_CHOICES, channel_statistics, describe_statistics, wants_normalization
from archlab.train.data.pipeline import EvalBatches, array_stream
from archlab.train.data.text import eval_windows, load_token_splits, window_stream
from archlab.train.errors import DataError


def _lm_dataset(config, shard: int, num_shards: int) -> Dataset:
    t, d = config.train, config.data
    splits = load_token_splits(d, d.seq_len)
    vocab = config.model.get("vocab_size", 256)
    if splits.vocab_size > vocab:
        raise DataError(f"data.tokenizer={d.tokenizer} has {splits.vocab_size:,} tokens but model.vocab_size={vocab}; "
                        f"set --config.model.vocab_size={splits.vocab_size}")
    return Dataset(
        train=window_stream(splits.train, t.batch_size, d.seq_len, config.seed, shard=shard, num_shards=num_shards,
                            workers=d.workers, prefetch=d.prefetch),
        eval_batches=eval_windows(splits.validation, d.seq_len, t.batch_size, t.eval_batches),
        example_input=np.zeros((1, d.seq_len), np.int32),
        source=splits.source,
        description=f"{len(splits.train):,} train / {len(splits.validation):,} validation {'bytes' if d.tokenizer == 'bytes' and splits.vocab_size == 256 else 'tokens'}",
    )


def check_class_labels(config, images) -> None:
    """Refuses labels a classifier cannot learn (DataError naming the file, the labels and the valid
    range): negative ones always, and those >= model.num_classes unless data.classes relabels them."""
    labels = np.concatenate([images.y_train, images.y_test])
    limit = config.model.num_classes if "num_classes" in config.model and not config.data.get("classes", "") else None
    why = " (labels are class indices)"
    if limit is not None and out_of_range_labels(labels, limit).max(initial=-1) >= limit:
        why = (f": the data has {images.num_classes} classes but model.num_classes={limit}; set "
               f"--config.model.num_classes={images.num_classes} or fix the labels")
    check_labels(labels, limit, config.data.path or images.source, why)


def _classification_dataset(config, shard: int, num_shards: int) -> Dataset:
    t, d = config.train, config.data
    if d.path and detect_image_format(d.path, d.format) in STREAMING_FORMATS:
        return streamed_classification_dataset(config, shard, num_shards)
    images = load_images(d.path, d.image_size, d.val_fraction, d.format)
    check_class_labels(config, images)
    images = select_classes(images, d.get("classes", ""))
    images, validation = hold_out_validation(images, d.get("validation_examples", 0))
    images = first_train_images(images, d.get("train_examples", 0), held_out=d.get("validation_examples", 0))
    normalization = ""
    if wants_normalization(d, bool(d.path)):
        mean, std = channel_statistics(images.x_train)
        scale = lambda x: ((x - mean) / std).astype(np.float32)
        images = dataclasses.replace(images, x_train=scale(images.x_train), x_test=scale(images.x_test))
        validation = None if validation is None else (scale(validation[0]), validation[1])
        normalization = f"; normalised per channel ({describe_statistics(mean, std)} of the training split)"
    test = {"inputs": images.x_test, "labels": images.y_test}
    shape = f"images of {images.x_train.shape[1:]}, {images.num_classes} classes"
    if validation is None:  # the periodic evaluations read the test split
        eval_batches, test_batches, held_out = EvalBatches.of_arrays(test, t.batch_size, t.eval_batches), None, "test"
        description = f"{len(images.x_train):,} train / {len(images.x_test):,} test {shape}"
    else:
        eval_batches = EvalBatches.of_arrays({"inputs": validation[0], "labels": validation[1]}, t.batch_size, t.eval_batches)
        test_batches, held_out = EvalBatches.of_arrays(test, t.batch_size), "validation"
        description = f"{len(images.x_train):,} train / {len(validation[0]):,} validation / {len(images.x_test):,} test {shape}"
    return Dataset(
        train=array_stream({"inputs": images.x_train, "labels": images.y_train}, t.batch_size, config.seed, shard=shard,
                           num_shards=num_shards, workers=d.workers, prefetch=d.prefetch),
        eval_batches=eval_batches,
        example_input=images.x_train[:1],
        source=images.source,
        description=description + normalization,
        num_classes=images.num_classes,
        held_out_name=held_out,
        test_batches=test_batches,
    )


def _restoration_dataset(config, shard: int, num_shards: int) -> Dataset:
    """Procedurally hazed images (digits by default, or data.path): hazed afresh every training
    batch, with fixed haze on the held-out split; batches ``{"inputs": hazy, "targets": clean}``."""
    t, d = config.train, config.data
    images = first_train_images(load_images(d.path, d.image_size, d.val_fraction, d.format), d.get("train_examples", 0))
    hazy_test = hazy_test_split(images.x_test)
    return Dataset(
        train=hazy_stream(images.x_train, t.batch_size, config.seed, shard=shard, num_shards=num_shards, workers=d.workers,
                          prefetch=d.prefetch),
        eval_batches=EvalBatches.of_arrays({"inputs": hazy_test, "targets": images.x_test}, t.batch_size, t.eval_batches),
        example_input=images.x_train[:1],
        source=f"{images.source}, hazed procedurally (I = J t + A (1 - t))",
        description=f"{len(images.x_train):,} train images (new haze every batch) / {len(images.x_test):,} test images "
                    f"(fixed haze) of {images.x_train.shape[1:]}",
        held_out_name="test",
        extras={"plot_inputs": hazy_test[:8], "plot_targets": images.x_test[:8]},
    )


# task -> {data.dataset name -> builder(config, shard, num_shards) -> Dataset}; the first name is
# the task's default. A task's builders may read data.path (a user file) as their loader allows.
DATASETS: dict[str, dict[str, Callable]] = {
    "lm": {"corpus": _lm_dataset},
    "classification": {"images": _classification_dataset, "topics": topics.topics_dataset},
    "restoration": {"hazy_digits": _restoration_dataset},
    "nerf": {"scene": build_nerf_dataset},
    "gan": {"ring": gan_data.ring_dataset, "digits": gan_data.digits_dataset},
}


def dataset_names(task: str) -> tuple[str, ...]:
    return tuple(DATASETS.get(task, {}))


# Data options only some datasets read: set for any other, they are an error, not a silent no-op.
DATASET_OPTIONS = {
    "classes": ("images",),
    "train_examples": ("images", "hazy_digits", "digits"),
    "validation_examples": ("images",),
}


FORMATS = ("auto", "text", "tokens", "npz", "cifar10", "tfrecord", "array_record", "image_folder")


def field_problems(d) -> list[str]:
    """The data section's pipeline fields that make no sense, as one-line messages."""
    problems = []
    if d.get("format", "auto") not in FORMATS:
        problems.append(f"data.format={d.format!r}; valid: {', '.join(FORMATS)}")
    if d.get("normalize", "auto") not in NORMALIZE_CHOICES:
        problems.append(f"data.normalize={d.normalize!r}; valid: {', '.join(NORMALIZE_CHOICES)}")
    if d.get("workers", 0) < 0:
        problems.append(f"data.workers must be >= 0, 0 = read in the training process (got {d.workers})")
    if d.get("prefetch", 0) < 0:
        problems.append(f"data.prefetch must be >= 0 batches, 0 = no read-ahead (got {d.prefetch})")
    return problems


def make_dataset(task: str, config, *, shard: int = 0, num_shards: int = 1) -> Dataset:
    """Builds the dataset a task trains on from ``config.data`` (raises DataError on bad input)."""
    for problem in field_problems(config.data):
        raise DataError(problem)
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

"""The recurrent classifiers' data: which help topic (or which file of a directory) a window of bytes comes from."""

from __future__ import annotations

import os

import numpy as np

from archlab.train.data.dataset import Dataset
from archlab.train.data.pipeline import EvalBatches, TrainStream, local_rows
from archlab.train.data.text import windows
from archlab.train.errors import DataError

# The recurrent classifiers' task: which help topic a window of bytes comes from. These 8 large
# topics share no text with each other (checked: no 64-byte shingle of one is in another; e.g.
# "specialnames" was left out because it contains "attribute-access" and "customization").
TOPIC_CLASSES = ("compound", "types", "formatstrings", "string-methods", "typesseq", "debugger", "typesmapping", "assignment")


def class_window_stream(texts: list[np.ndarray], batch_size: int, seq_len: int, seed: int, *, shard: int = 0, num_shards: int = 1,
                        workers: int = 0, prefetch: int = 2) -> TrainStream:
    """Class-balanced random windows: each row picks a class uniformly, then a window of its text.

    Batches are ``{"inputs": int32 [batch, seq_len], "labels": int32 [batch]}``.
    """
    if batch_size % num_shards:
        raise DataError(f"train.batch_size={batch_size} is not divisible by {num_shards} processes")

    def batch_fn(position: int) -> dict:
        rng = np.random.default_rng([seed, position])
        labels = rng.integers(0, len(texts), size=batch_size)
        starts = (rng.random(batch_size) * np.array([len(texts[c]) - seq_len + 1 for c in labels])).astype(np.int64)
        rows = local_rows(np.arange(batch_size), shard, num_shards)
        tokens = np.stack([windows(texts[labels[r]], starts[r : r + 1], seq_len)[0] for r in rows])
        return {"inputs": tokens, "labels": labels[rows].astype(np.int32)}

    return TrainStream(batch_fn, name=f"class-balanced windows of {len(texts)} texts", workers=workers, prefetch=prefetch)


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


def topics_dataset(config, shard: int, num_shards: int) -> Dataset:
    """Each class's text: the head (1 - val_fraction) trains, the tail is cut into non-overlapping test windows."""
    t, d = config.train, config.data
    names, texts, source = labelled_texts(d.path)
    train_texts, test_inputs, test_labels = [], [], []
    for label, (name, text) in enumerate(zip(names, texts)):
        cut = len(text) - int(len(text) * d.val_fraction)
        if cut < d.seq_len or len(text) - cut < d.seq_len:
            raise DataError(f"class {name!r} has {len(text)} bytes; each split needs at least data.seq_len={d.seq_len}")
        train_texts.append(text[:cut])
        tail = text[cut:]
        held_out = windows(tail, np.arange((len(tail) - 1) // (d.seq_len - 1)) * (d.seq_len - 1), d.seq_len)  # non-overlapping
        test_inputs.append(held_out)
        test_labels.append(np.full(len(held_out), label, np.int32))
    test_x, test_y = np.concatenate(test_inputs), np.concatenate(test_labels)
    return Dataset(
        train=class_window_stream(train_texts, t.batch_size, d.seq_len, config.seed, shard=shard, num_shards=num_shards,
                                  workers=d.workers, prefetch=d.prefetch),
        eval_batches=EvalBatches.of_arrays({"inputs": test_x, "labels": test_y}, t.batch_size, t.eval_batches),
        example_input=np.zeros((1, d.seq_len), np.int32),
        source=source,
        description=f"{len(names)} classes ({', '.join(names)}); {len(test_x):,} held-out windows of {d.seq_len} bytes from each text's tail",
        num_classes=len(names),
        held_out_name="test",
    )



"""Datasets and deterministic, checkpointable batch iterators.

The embedded text corpus is the stdlib's ``pydoc_data.topics`` (the Python reference's help
topics, ~465 K bytes), split by topic so validation text comes from topics never trained on. Any
UTF-8/bytes file can replace it through ``data.path``; its last ``val_fraction`` is held out.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

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


class TextWindowIterator:
    """Random windows of ``seq_len + 1`` bytes; batch ``i`` is a pure function of (seed, i).

    Its whole state is ``position`` (batches produced so far), saved in every checkpoint, so a
    resumed run sees exactly the batches an uninterrupted run would have seen. ``shard`` /
    ``num_shards`` select this process's rows of the global batch for multi-host runs.
    """

    def __init__(self, data: np.ndarray, batch_size: int, seq_len: int, seed: int, *, shard: int = 0, num_shards: int = 1):
        if len(data) < seq_len + 1:
            raise DataError(f"text of {len(data)} bytes is shorter than one window of {seq_len + 1}")
        if batch_size % num_shards:
            raise DataError(f"batch_size {batch_size} is not divisible by {num_shards} processes")
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.shard = shard
        self.num_shards = num_shards
        self.position = 0
        self._window = np.arange(seq_len + 1)

    def get_state(self) -> dict:
        return {"position": int(self.position)}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])

    def batch_at(self, position: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, position])
        starts = rng.integers(0, len(self.data) - self.seq_len, size=self.batch_size)
        per = self.batch_size // self.num_shards
        starts = starts[self.shard * per : (self.shard + 1) * per]
        return self.data[starts[:, None] + self._window].astype(np.int32)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        batch = self.batch_at(self.position)
        self.position += 1
        return batch


def eval_windows(data: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows of ``seq_len + 1`` covering the split (each byte predicted once)."""
    n = (len(data) - 1) // seq_len
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    return data[idx].astype(np.int32)

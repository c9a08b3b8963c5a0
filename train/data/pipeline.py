"""grain pipelines: the training stream and the held-out batches of every dataset.

Every dataset's training batches come from one grain ``MapDataset``: ``range(positions)`` mapped
by the dataset's ``batch_fn(position) -> dict of numpy arrays``. ``batch_fn`` is a pure function of
(seed, position): it draws the global batch's record indices and reads only this process's rows
of them from a random-access source. The indices come from grain's own index shuffle for the
streamed sources (:class:`GrainShuffleOrder`, O(1) memory), from a cached per-epoch permutation
for in-memory arrays (:class:`EpochPermutation`, the order the documented figures were measured
with), or as random window starts for text (:func:`random_starts`). grain supplies the rest:
read-ahead threads (``data.prefetch``), worker processes (``data.workers``, ``mp_prefetch``) and
the iterator state that the checkpoint stores next to the train state.

Why the global batch is drawn rather than ``ds[process::count].shuffle(seed)``: a process-sliced
shuffle makes the order depend on the number of processes, so a run resumed on another topology
(the checkpoints reshard) would see different data. Drawing the *global* batch and reading this
process's rows keeps the order the same for 1 or N hosts, and resuming is exact for any
topology: the state is the position.
"""

from __future__ import annotations

import json
from typing import Callable

import grain
import numpy as np
from absl import flags

from archlab.train.errors import DataError

_ENDLESS = 2**62  # positions of the training stream (it never ends; the loop stops it)
_PERMUTATION_CACHE = 2  # epochs whose permutations are kept (the current and the next)


def local_rows(rows: np.ndarray, shard: int, num_shards: int) -> np.ndarray:
    """This process's contiguous slice of a global batch's rows (the mesh's data order)."""
    per = len(rows) // num_shards
    return rows[shard * per : (shard + 1) * per]


class EpochPermutation:
    """Record indices of global batch ``position``: a new permutation of ``size`` records every
    epoch (``np.random.default_rng([seed, epoch])``), batches taken in order, the last partial batch
    of an epoch dropped. Each epoch's permutation is computed once (not once per batch)."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < batch_size:
            raise DataError(f"{size:,} training examples are fewer than train.batch_size={batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_epoch = size // batch_size
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, position: int) -> np.ndarray:
        epoch, index = divmod(int(position), self.batches_per_epoch)
        order = self._cache.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._cache = {e: o for e, o in self._cache.items() if e > epoch - _PERMUTATION_CACHE}
            self._cache[epoch] = order
        return order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getstate__(self):  # worker processes rebuild the cache themselves
        return {**self.__dict__, "_cache": {}}


class GrainShuffleOrder:
    """Record indices of global batch ``position`` from grain's own index shuffle
    (``MapDataset.range(size).shuffle(seed).repeat()``: O(1) memory for any number of records, a
    new order every epoch, batches running on across epoch ends). Used by the streamed sources,
    which may hold more records than a cached permutation should."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < batch_size:
            raise DataError(f"{size:,} training examples are fewer than train.batch_size={batch_size}")
        self.size, self.batch_size = size, batch_size
        self._order = grain.MapDataset.range(size).shuffle(seed=seed).repeat(None)

    def __call__(self, position: int) -> np.ndarray:
        start = int(position) * self.batch_size
        return np.fromiter((self._order[i] for i in range(start, start + self.batch_size)), np.int64, self.batch_size)


def random_starts(seed: int, position: int, batch_size: int, count: int) -> np.ndarray:
    """``batch_size`` window starts drawn uniformly from ``[0, count)`` for batch ``position``
    (with replacement, like nanoGPT's sampler: any corpus size, O(batch) memory)."""
    return np.random.default_rng([seed, position]).integers(0, count, size=batch_size)


class TrainStream:
    """The training batches as a grain iterator: ``next()`` gives the batch at ``position``.

    ``get_state`` / ``set_state`` carry the position and grain's own iterator state, saved in the
    orbax checkpoint, so a resumed run reads exactly the batches an uninterrupted one reads.
    ``batch_at(i)`` reads batch ``i`` directly (random access; the example batch, calibration).
    """

    def __init__(self, batch_fn: Callable[[int], dict], *, name: str, workers: int = 0, prefetch: int = 2):
        self.name = name
        self.workers, self.prefetch = workers, prefetch
        self._batches = grain.MapDataset.range(_ENDLESS).map(batch_fn)
        self._batch_fn = batch_fn
        self.size: int | None = None  # records per epoch, where the stream has epochs (record_stream)
        self.position = 0
        self._iterator = None

    def __repr__(self) -> str:
        return f"TrainStream({self.name})"

    def batch_at(self, position: int) -> dict:
        return self._batch_fn(int(position))

    def _open(self):
        read = grain.ReadOptions(num_threads=1 if self.prefetch > 0 else 0, prefetch_buffer_size=self.prefetch)
        iterable = self._batches.to_iter_dataset(read)
        if self.workers > 0:
            if not flags.FLAGS.is_parsed():  # grain's worker start-up reads absl flags; archlab parses none
                flags.FLAGS.mark_as_parsed()
            iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        return iter(iterable)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._open()
            if self.position:
                self._iterator.set_state(_position_state(self._iterator, self.position))
        batch = next(self._iterator)
        self.position += 1
        return batch

    def get_state(self) -> dict:
        grain_state = self._iterator.get_state() if self._iterator is not None else None
        return {"position": int(self.position), "grain": json.dumps(grain_state) if grain_state is not None else ""}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
        self.close()
        self._iterator = self._open()
        saved = state.get("grain", "")
        if saved:
            self._iterator.set_state(json.loads(saved))
        elif self.position:
            self._iterator.set_state(_position_state(self._iterator, self.position))

    def close(self) -> None:
        """Stops read-ahead threads and worker processes (the next ``next()`` reopens)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()

    @staticmethod
    def state_problem(state: dict, step: int) -> str | None:
        """Why a saved ``get_state()`` cannot be the stream after ``step`` steps (one batch a step), or None."""
        position = state.get("position") if isinstance(state, dict) else None
        if not isinstance(position, int) or isinstance(position, bool):
            return f"'position' is {position!r}, not an integer"
        if position != step:
            return f"'position' is {position} but the state is at step {step}"
        saved = state.get("grain", "")
        if not isinstance(saved, str):
            return f"'grain' is {type(saved).__name__}, not grain's iterator state as JSON text"
        if saved:
            try:
                json.loads(saved)
            except ValueError:
                return "'grain' is not valid JSON"
        return None


def _position_state(iterator, position: int) -> dict:
    """grain's iterator state for "the next batch is ``position``" (an iterator opened fresh)."""
    state = iterator.get_state()
    if set(state) == {"next_index"}:
        return {"next_index": int(position)}
    raise DataError("this checkpoint holds only a data position; resume it with data.workers=0")


class EvalBatches:
    """A held-out split as fixed-size batches ``(batch, weights)``; the last one zero-padded with
    weight 0 on the padding. Re-iterable and indexable; ``limit`` > 0 keeps the first ``limit``."""

    def __init__(self, read_rows: Callable[[np.ndarray], dict], size: int, batch_size: int, limit: int = 0):
        self.read_rows, self.size, self.batch_size = read_rows, size, batch_size
        count = -(-size // batch_size)
        self.count = min(count, limit) if limit > 0 else count

    @classmethod
    def of_arrays(cls, arrays: dict[str, np.ndarray], batch_size: int, limit: int = 0) -> "EvalBatches":
        size = len(next(iter(arrays.values())))
        return cls(lambda rows: {name: array[rows] for name, array in arrays.items()}, size, batch_size, limit)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[dict, np.ndarray]:
        if not -self.count <= index < self.count:
            raise IndexError(index)
        start = (index % self.count) * self.batch_size
        n = min(self.batch_size, self.size - start)
        batch = self.read_rows(np.arange(start, start + n))
        weights = np.zeros((self.batch_size,), np.float32)
        weights[:n] = 1.0
        if n < self.batch_size:
            batch = {k: np.concatenate([v, np.zeros((self.batch_size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
        return batch, weights

    def __iter__(self):
        read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
        return iter(grain.MapDataset.range(self.count).map(self.__getitem__).to_iter_dataset(read))


def record_stream(read_rows: Callable[[np.ndarray], dict], size: int, batch_size: int, seed: int, *, shard: int = 0,
                  num_shards: int = 1, name: str = "records", workers: int = 0, prefetch: int = 2,
                  shuffle: str = "permutation") -> TrainStream:
    """Shuffled batches of ``size`` records, a new order every epoch (``shuffle``: "permutation",
    :class:`EpochPermutation`, or "grain", :class:`GrainShuffleOrder`); this process reads only its
    rows of each global batch through ``read_rows(indices) -> dict``."""
    if batch_size % num_shards:
        raise DataError(f"train.batch_size={batch_size} is not divisible by {num_shards} processes")
    order = (GrainShuffleOrder if shuffle == "grain" else EpochPermutation)(size, batch_size, seed)
    stream = TrainStream(lambda position: read_rows(local_rows(order(position), shard, num_shards)),
                         name=f"{name}: {size:,} records", workers=workers, prefetch=prefetch)
    stream.size = size  # records per epoch
    return stream


def array_stream(arrays: dict[str, np.ndarray], batch_size: int, seed: int, *, shard: int = 0, num_shards: int = 1,
                 workers: int = 0, prefetch: int = 2) -> TrainStream:
    """:func:`record_stream` over aligned in-memory arrays (images and labels, rays and colours)."""
    size = len(next(iter(arrays.values())))
    stream = record_stream(lambda rows: {name: array[rows] for name, array in arrays.items()}, size, batch_size, seed,
                           shard=shard, num_shards=num_shards, name="arrays", workers=workers, prefetch=prefetch)
    stream.arrays = arrays  # what it reads (for inspection; the stream never copies them)
    return stream

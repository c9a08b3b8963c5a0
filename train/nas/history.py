"""Every architecture a search evaluated, in order: a fixed-capacity pytree so orbax can save it."""

from __future__ import annotations

import numpy as np
from flax import struct


@struct.dataclass
class History:
    codes: np.ndarray  # int32 [capacity, D]; rows >= count are zero
    scores: np.ndarray  # float64 [capacity] (as the scorer gave them, so regret to a table optimum is exact); NaN past count
    count: np.ndarray  # int32 []

    @property
    def capacity(self) -> int:
        return self.scores.shape[0]

    @property
    def filled(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes [n, D], scores [n])`` for the n evaluations so far."""
        n = int(self.count)
        return np.asarray(self.codes[:n]), np.asarray(self.scores[:n])


def empty_history(capacity: int, num_decisions: int) -> History:
    return History(codes=np.zeros((capacity, num_decisions), np.int32),
                   scores=np.full((capacity,), np.nan),
                   count=np.asarray(0, np.int32))


def append(history: History, codes: np.ndarray, scores: np.ndarray) -> History:
    """A new History with ``codes``/``scores`` after the existing rows (the input is left untouched)."""
    n, start = len(scores), int(history.count)
    if start + n > history.capacity:
        raise ValueError(f"history holds {history.capacity} evaluations; {start} + {n} would overflow it")
    new_codes, new_scores = np.array(history.codes), np.array(history.scores)
    new_codes[start:start + n] = codes
    new_scores[start:start + n] = scores
    return History(codes=new_codes, scores=new_scores, count=np.asarray(start + n, np.int32))


def best_so_far(scores: np.ndarray) -> np.ndarray:
    """Running maximum of ``scores`` (NaN counts as worst), for best-vs-evaluations curves."""
    scores = np.asarray(scores, np.float64)
    return np.maximum.accumulate(np.where(np.isnan(scores), -np.inf, scores)) if len(scores) else scores

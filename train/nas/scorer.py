"""The scorer contract every strategy is written against, and the one place that calls it.

``score_fn(codes [P, D] int32, rng_seed: int) -> scores [P] float``, higher is better: training a
vmap-ed population for K steps, a zero-cost proxy, or a table lookup all fit.
"""

from __future__ import annotations

from typing import Protocol

import jax
import numpy as np


class ScoreFn(Protocol):
    def __call__(self, codes: np.ndarray, rng_seed: int) -> np.ndarray: ...


def score_batch(score_fn: ScoreFn, codes, key) -> np.ndarray:
    """Scores a whole batch in one call, with an int seed taken from ``key`` (so runs replay exactly)."""
    codes = np.asarray(codes, np.int32)
    rng_seed = int(np.asarray(key, np.uint32)[-1] >> 1)  # a raw key's words are uniform bits: a 31-bit seed
    scores = np.asarray(score_fn(codes, rng_seed), np.float64)
    if scores.shape != (codes.shape[0],):
        raise ValueError(f"score_fn returned shape {scores.shape} for {codes.shape[0]} codes; expected ({codes.shape[0]},)")
    return scores


def new_key(seed: int) -> np.ndarray:
    """A raw uint32[2] PRNG key as a numpy array (orbax saves it like any other array)."""
    return np.asarray(jax.random.PRNGKey(seed))


def split_key(key: np.ndarray, num: int = 2) -> list[np.ndarray]:
    return list(np.asarray(jax.random.split(jax.numpy.asarray(key), num)))

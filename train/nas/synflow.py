"""Synflow, a zero-cost proxy: how much "synaptic flow" an untrained cell passes, for a whole population at once.

Synflow (Tanaka et al. 2020, used as a NAS proxy by Abdelfattah et al. 2021): make every parameter
positive (``θ -> |θ|``), feed one all-ones image, sum the logits into ``R`` and score
``Σ_θ (dR/dθ ⊙ θ)`` over the weights (stem, conv kernels, head; biases are made positive too but
not scored, as the published code scores conv/linear weights only). No data and no training: a
cell whose output node is cut off from its input scores exactly 0.

All P members are scored in one jit: ``population_logits`` (the same batched cell program the
trainer uses) on the shared ones image; since no parameter is shared between members,
the gradient of ``Σ_m R_m`` with respect to member m's params is that of its own ``R_m``.
As in the published implementations the computation runs in float64 (``R`` is a sum over all
input-output paths of products of positive weights, so it grows geometrically with depth and
width); the scores come back as a numpy float64 array.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from archlab.arch.nas_cell import HEAD_GRID, CellNet, init_population, op_dispatch, population_logits
from archlab.arch.search_space import NUM_EDGES, NUM_OPS, check_choices
from archlab.train.nas.small_jit import small_jit

WEIGHTS = ("stem", "conv3", "conv1", "head")  # the scored leaves; "stem_bias" and "head_bias" are not


@small_jit  # one ones-image forward+backward: compiling it dominates, so compile for speed (CPU: ~2x faster)
def _population_synflow(params: dict, codes: jax.Array, dispatch: dict, ones: jax.Array) -> jax.Array:
    """Synflow [P] of ``params`` (leading P axis) on the ``ones`` image [1, H, W, in]."""
    positive = jax.tree.map(jnp.abs, params)
    total = lambda p: population_logits(p, codes, dispatch, ones).sum()  # Σ_m R_m
    grads = jax.grad(total)(positive)
    per_leaf = [(grads[name] * positive[name]).reshape(len(codes), -1).sum(axis=1) for name in WEIGHTS]
    return sum(per_leaf)


def _check_population(codes) -> np.ndarray:
    codes = check_choices(codes, (NUM_OPS,) * NUM_EDGES, "cell")
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"synflow scores a population of cells [P, {NUM_EDGES}] with P >= 1, got shape {codes.shape}")
    return codes


def synflow_of_params(params: dict, codes, *, image_size: int = 16) -> np.ndarray:
    """Synflow [P] of given population params (``init_population`` layout) for cells ``codes`` [P, 6]."""
    codes = _check_population(codes)
    if image_size % HEAD_GRID:
        raise ValueError(f"image_size must be a multiple of {HEAD_GRID} (the head pools to a {HEAD_GRID}x{HEAD_GRID} grid), got {image_size}")
    tables = op_dispatch(codes)
    in_channels = params["stem"].shape[1] // 9
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        ones = jnp.ones((1, image_size, image_size, in_channels), jnp.float64)
        dispatch = {key: jnp.asarray(table) for key, table in tables.items()}
        scores = _population_synflow(params64, jnp.asarray(codes), dispatch, ones)
        return np.asarray(scores, np.float64)


def synflow_scores(codes, rng: jax.Array, net: CellNet = CellNet(), *, image_size: int = 16) -> np.ndarray:
    """Synflow [P] of the cells ``codes`` [P, 6] at a fresh ``init_population(rng, P, net)``; higher is better."""
    codes = _check_population(codes)
    params = init_population(rng, len(codes), net)
    return synflow_of_params(params, codes, image_size=image_size)


def make_synflow_scorer(net: CellNet = CellNet(), *, image_size: int = 16) -> Callable[[np.ndarray, int], np.ndarray]:
    """A scorer with the strategy contract ``score_fn(codes [P, 6] int32, rng_seed) -> [P] float``
    (see ``train.nas.scorer``): synflow at an initialisation drawn from ``rng_seed``."""
    def score_fn(codes: np.ndarray, rng_seed: int) -> np.ndarray:
        return synflow_scores(codes, jax.random.PRNGKey(int(rng_seed)), net, image_size=image_size)

    return score_fn

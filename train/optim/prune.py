"""Global magnitude pruning as an optax transformation (``train.sparsity``).

One threshold across all prunable kernels (Dense/Conv ``kernel`` leaves; never biases or norm
scales): the smallest-magnitude weights of the whole model are pruned, so layers end up as sparse
as their weights deserve rather than equally sparse. Sparsity grows gradually on the polynomial
schedule of Zhu & Gupta (2017), from 0 at ``train.prune_start`` to ``train.sparsity`` at
``train.prune_end``, re-pruning every ``train.prune_every`` steps; after that the masks are fixed
and the surviving weights fine-tune.

The masks live in the transformation's state, so they are part of ``TrainState.opt_state`` and
orbax saves and restores them with the rest of the optimizer. The transformation goes last in
the chain and rewrites each pruned weight's update to ``-param``: whatever Adam's moments or
weight decay proposed, ``param + update`` is exactly zero there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class PruneState(NamedTuple):
    count: jax.Array  # updates applied so far
    masks: Any  # a bool array per param leaf; False = pruned (non-prunable leaves stay all True)


def is_prunable(path, leaf) -> bool:
    """Dense/Conv kernels (rank >= 2, named ``kernel``); biases, norms and embeddings are kept."""
    names = [str(getattr(entry, "key", getattr(entry, "name", ""))) for entry in path]
    return "kernel" in names and getattr(leaf, "ndim", 0) >= 2


def prune_end_step(train_config) -> int:
    """``train.prune_end``, where 0 means three quarters of ``train.steps`` (a quarter to recover)."""
    t = train_config
    return t.prune_end if t.prune_end > 0 else max(int(0.75 * t.steps), t.prune_start + 1)


def config_problems(train_config) -> list[str]:
    """What is wrong with the pruning fields, as one-line messages (empty when fine)."""
    t = train_config
    if not 0.0 <= t.sparsity < 1.0:
        return [f"train.sparsity must be in [0, 1) (a fraction of the prunable weights; got {t.sparsity})"]
    if t.prune_start < 0 or t.prune_every < 1:
        return [f"train.prune_start must be >= 0 and train.prune_every >= 1 (got {t.prune_start}, {t.prune_every})"]
    if t.sparsity > 0:
        end = prune_end_step(t)
        if not t.prune_start < end <= t.steps:
            return [f"pruning needs train.prune_start < train.prune_end <= train.steps (got {t.prune_start}, {end}, {t.steps}; prune_end=0 means 3/4 of steps)"]
    return []


def sparsity_at(count, *, target: float, start: int, end: int):
    """Polynomial (cubic) ramp: 0 before ``start``, ``target`` from ``end`` on."""
    progress = jnp.clip((jnp.asarray(count, jnp.float32) - start) / max(end - start, 1), 0.0, 1.0)
    return target * (1.0 - (1.0 - progress) ** 3)


def global_magnitude_masks(params, masks, sparsity):
    """New masks pruning the ``sparsity`` fraction of prunable weights with the smallest |w|.

    Already-pruned weights count as zero and stay pruned (masks only shrink).
    """
    flags = jax.tree_util.tree_map_with_path(is_prunable, params)
    leaves = [jnp.where(m, jnp.abs(p), 0.0).astype(jnp.float32).ravel()
              for p, m, f in zip(jax.tree.leaves(params), jax.tree.leaves(masks), jax.tree.leaves(flags)) if f]
    if not leaves:
        return masks
    magnitudes = jnp.concatenate(leaves)
    k = jnp.floor(sparsity * magnitudes.size).astype(jnp.int32)
    threshold = jnp.where(k > 0, jnp.sort(magnitudes)[jnp.maximum(k - 1, 0)], -1.0)
    return jax.tree.map(lambda p, m, f: m & (jnp.abs(p) > threshold) if f else m, params, masks, flags)


def magnitude_pruning(*, target: float, start: int, end: int, every: int) -> optax.GradientTransformation:
    """The pruning transformation; put it last in the optimizer chain (it needs ``params``)."""
    def init_fn(params):
        return PruneState(count=jnp.zeros((), jnp.int32), masks=jax.tree.map(lambda p: jnp.ones(p.shape, jnp.bool_), params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("magnitude_pruning needs params: call tx.update(grads, opt_state, params)")
        count = state.count
        due = (count >= start) & (count <= end) & (((count - start) % every == 0) | (count == end))
        proposed = optax.apply_updates(params, updates)
        masks = jax.lax.cond(
            due,
            lambda: global_magnitude_masks(proposed, state.masks, sparsity_at(count, target=target, start=start, end=end)),
            lambda: state.masks,
        )
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p.astype(u.dtype)), updates, params, masks)
        return updates, PruneState(count=count + 1, masks=masks)

    return optax.GradientTransformation(init_fn, update_fn)


def from_config(train_config) -> optax.GradientTransformation | None:
    """The transformation ``train.sparsity`` asks for, or None when pruning is off."""
    t = train_config
    if t.sparsity <= 0:
        return None
    return magnitude_pruning(target=t.sparsity, start=t.prune_start, end=prune_end_step(t), every=t.prune_every)


def find_masks(opt_state):
    """The masks inside an optimizer state (None when it holds no PruneState)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState)) if isinstance(s, PruneState)]
    return found[0].masks if found else None


@jax.jit
def _zero_and_total(params):
    flags = jax.tree_util.tree_map_with_path(is_prunable, params)
    zeros = sum((jnp.sum(p == 0) for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f), jnp.zeros((), jnp.int32))
    total = sum(p.size for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)) if f)
    return zeros, total


def measured_sparsity(params) -> float:
    """Fraction of prunable weights that are exactly zero."""
    zeros, total = _zero_and_total(params)
    return float(zeros) / max(int(total), 1)


def nonzero_count(params) -> int:
    """Parameters that are not exactly zero (the size a sparse format would store)."""
    return int(sum(int(jnp.sum(p != 0)) for p in jax.tree.leaves(params)))

"""L1/L2 weight penalties added to the training loss (``train.l1``, ``train.l2``).

Penalty = l1 * sum |w| + l2 * sum w^2 over Dense/Conv kernels (the same leaves pruning treats as
prunable; biases and norm scales are free). Unlike ``train.weight_decay`` (AdamW's decoupled
decay, applied after Adam's normalisation), this is the classic coupled penalty: its gradient goes
through Adam with the data gradient. The train step reports it as the ``penalty`` metric and keeps
``loss`` the data loss, so train and eval losses stay comparable.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from archlab.train.optim.prune import is_prunable


def config_problems(train_config) -> list[str]:
    t = train_config
    if t.l1 < 0 or t.l2 < 0:
        return [f"train.l1 and train.l2 must be >= 0 (got {t.l1}, {t.l2})"]
    return []


def weight_penalty(params, *, l1: float = 0.0, l2: float = 0.0) -> jax.Array:
    """l1 * sum |w| + l2 * sum w^2 over the kernels of ``params`` (float32 scalar)."""
    flags = jax.tree_util.tree_map_with_path(is_prunable, params)
    total = jnp.zeros((), jnp.float32)
    for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(flags)):
        if f:
            p = p.astype(jnp.float32)
            if l1:
                total = total + l1 * jnp.sum(jnp.abs(p))
            if l2:
                total = total + l2 * jnp.sum(jnp.square(p))
    return total


def from_config(train_config) -> Callable | None:
    """``penalty(params) -> scalar`` for the train step, or None when both penalties are 0."""
    l1, l2 = float(train_config.l1), float(train_config.l2)
    if l1 == 0 and l2 == 0:
        return None
    return lambda params: weight_penalty(params, l1=l1, l2=l2)

"""Random codes and one-decision mutation over a space given as ``num_choices``.

Generic over any product space (NAS-Bench-201 cell edges, dense-net choices, a hyperparameter grid:
``arch.search_space``'s spaces give ``num_choices`` and the meaning of a code). This is the one
implementation of sampling and mutation, the one every strategy uses; enumeration (code <-> index)
is ``arch.search_space.codes_from_indices`` / ``indices_from_codes``. The jax functions are
jit/vmap-able with ``num_choices`` static.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from archlab.train.nas.small_jit import small_jit


def check_num_choices(num_choices: Sequence[int]) -> tuple[int, ...]:
    """``num_choices`` as a tuple of ints, each >= 1, or a one-line ValueError."""
    choices = tuple(int(k) for k in num_choices)
    if not choices or min(choices) < 1:
        raise ValueError(f"num_choices must be a non-empty sequence of ints >= 1, got {tuple(num_choices)}")
    return choices


def num_codes(num_choices: Sequence[int]) -> int:
    """Size of the space (a Python int, so it cannot overflow)."""
    return math.prod(int(k) for k in num_choices)


def random_codes(rng: jax.Array, num_choices: Sequence[int], n: int) -> jax.Array:
    """``n`` codes drawn uniformly from the space: int32 ``[n, D]``."""
    sizes = jnp.asarray(num_choices, jnp.int32)
    u = jax.random.uniform(rng, (n, len(num_choices)))
    return jnp.minimum((u * sizes).astype(jnp.int32), sizes - 1)


random_codes_jitted = small_jit(random_codes, static_argnums=(1, 2))  # num_choices static: pass a tuple


def mutate(rng: jax.Array, code: jax.Array, num_choices: Sequence[int]) -> jax.Array:
    """``code`` with exactly one decision changed to a different value (Real et al.'s mutation).

    The decision is uniform over those with more than one choice, the new value uniform over the
    other choices. A space where no decision has two choices cannot be mutated.
    """
    sizes = np.asarray(num_choices, np.int32)
    mutable = np.flatnonzero(sizes > 1)
    if not mutable.size:
        raise ValueError(f"cannot mutate in a space with no decision of more than one choice: {tuple(num_choices)}")
    u = jax.random.uniform(rng, (2,))  # one draw for both picks: fewer PRNG kernels to compile
    position = jnp.asarray(mutable)[jnp.minimum((u[0] * mutable.size).astype(jnp.int32), mutable.size - 1)]
    size = jnp.asarray(sizes)[position]
    shift = 1 + jnp.minimum((u[1] * (size - 1)).astype(jnp.int32), size - 2)  # 1..size-1
    return code.at[position].set((code[position] + shift) % size)

"""Random search (batches of uniform codes) and grid search (every code once, in lexicographic order).

Grid search serves small spaces such as a hyperparameter grid, whose points are scored as one
vmap-ed population per batch; on a space larger than the budget it covers a lexicographic prefix.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import struct

from archlab.arch.search_space import codes_from_indices
from archlab.train.nas.history import History, append, empty_history
from archlab.train.nas.scorer import ScoreFn, new_key, score_batch, split_key
from archlab.train.nas.search_config import search_config
from archlab.train.nas.space_ops import check_num_choices, num_codes, random_codes_jitted


@struct.dataclass
class SamplingState:
    """State of random and grid search: the next grid index is ``history.count``."""
    key: np.ndarray  # uint32 [2]
    cycle: np.ndarray  # int32 []
    history: History
    num_choices: tuple[int, ...] = struct.field(pytree_node=False)


def init_random(seed: int, num_choices, config=None) -> SamplingState:
    cfg, num_choices = search_config(config), check_num_choices(num_choices)
    return SamplingState(key=new_key(seed), cycle=np.asarray(0, np.int32),
                         history=empty_history(cfg.budget, len(num_choices)), num_choices=num_choices)


def random_step(state: SamplingState, score_fn: ScoreFn, config=None, *, max_evals: int | None = None) -> SamplingState:
    """Scores one batch of ``search.batch_size`` uniform codes (fewer when ``max_evals`` says so)."""
    cfg = search_config(config)
    key, sample_key, score_key = split_key(state.key, 3)
    n = cfg.batch_size if max_evals is None else min(cfg.batch_size, max_evals)
    codes = np.asarray(random_codes_jitted(jnp.asarray(sample_key), state.num_choices, cfg.batch_size))[:n]  # one compile
    scores = score_batch(score_fn, codes, score_key)
    return state.replace(key=key, cycle=np.asarray(int(state.cycle) + 1, np.int32), history=append(state.history, codes, scores))


def init_grid(seed: int, num_choices, config=None) -> SamplingState:
    """Like random search, but its history holds at most the whole grid."""
    cfg, num_choices = search_config(config), check_num_choices(num_choices)
    return SamplingState(key=new_key(seed), cycle=np.asarray(0, np.int32),
                         history=empty_history(min(cfg.budget, num_codes(num_choices)), len(num_choices)),
                         num_choices=num_choices)


def grid_step(state: SamplingState, score_fn: ScoreFn, config=None, *, max_evals: int | None = None) -> SamplingState:
    """Scores the next ``search.batch_size`` codes of the lexicographic enumeration."""
    cfg = search_config(config)
    start = int(state.history.count)
    n = min(cfg.batch_size, state.history.capacity - start, max_evals if max_evals is not None else cfg.batch_size)
    if n <= 0:
        raise ValueError(f"grid search is done: all {state.history.capacity} codes of its budget were scored")
    key, score_key = split_key(state.key)
    codes = codes_from_indices(np.arange(start, start + n), state.num_choices)
    scores = score_batch(score_fn, codes, score_key)
    return state.replace(key=key, cycle=np.asarray(int(state.cycle) + 1, np.int32), history=append(state.history, codes, scores))

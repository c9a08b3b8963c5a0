"""Regularized (aging) evolution, Real et al. 2019, with batched children.

Each cycle draws ``children_per_cycle`` tournaments of ``sample_size`` members from the current
population, mutates each winner in one decision, scores all children in one scorer call, and
replaces the same number of *oldest* members (a ring buffer: ``head`` is the oldest slot). With one
child per cycle this is the paper's algorithm; more children per cycle let a vmap-ed scorer fill
its batch. The first step scores the random initial population.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from archlab.train.nas.history import History, append, empty_history
from archlab.train.nas.scorer import ScoreFn, new_key, score_batch, split_key
from archlab.train.nas.search_config import SearchConfig, search_config
from archlab.train.nas.small_jit import small_jit
from archlab.train.nas.space_ops import check_num_choices, mutate, random_codes_jitted


@struct.dataclass
class EvolutionState:
    codes: np.ndarray  # int32 [P, D] population
    scores: np.ndarray  # float64 [P]
    born: np.ndarray  # int32 [P]: evaluation index at which each member was added (its age)
    head: np.ndarray  # int32 []: slot of the oldest member, the next to be replaced
    key: np.ndarray  # uint32 [2]
    cycle: np.ndarray  # int32 []: steps taken; 0 means the population is not scored yet
    history: History
    num_choices: tuple[int, ...] = struct.field(pytree_node=False)


def init_evolution(seed: int, num_choices, config=None) -> EvolutionState:
    """A search state with an unscored random population; its history holds ``search.budget`` rows."""
    cfg, num_choices = search_config(config), check_num_choices(num_choices)
    if cfg.budget < cfg.population:
        raise ValueError(f"search.budget ({cfg.budget}) must be >= search.population ({cfg.population}) for evolution")
    if cfg.sample_size > cfg.population or cfg.children_per_cycle > cfg.population:
        raise ValueError(f"search.sample_size ({cfg.sample_size}) and search.children_per_cycle "
                         f"({cfg.children_per_cycle}) must be <= search.population ({cfg.population})")
    key, init_key = split_key(new_key(seed))
    P = cfg.population
    return EvolutionState(
        codes=np.asarray(random_codes_jitted(jnp.asarray(init_key), num_choices, P)),
        scores=np.full((P,), np.nan), born=np.full((P,), -1, np.int32),
        head=np.asarray(0, np.int32), key=key, cycle=np.asarray(0, np.int32),
        history=empty_history(cfg.budget, len(num_choices)), num_choices=num_choices)


def evolution_step(state: EvolutionState, score_fn: ScoreFn, config=None, *, max_evals: int | None = None) -> EvolutionState:
    """One cycle (at most ``max_evals`` evaluations); the same state and scorer give the same result."""
    cfg: SearchConfig = search_config(config)
    key, propose_key, score_key = split_key(state.key, 3)
    if int(state.cycle) == 0:  # score the initial population
        P = state.codes.shape[0]
        if max_evals is not None and max_evals < P:
            raise ValueError(f"the initial population needs {P} evaluations, only {max_evals} left in the budget")
        scores = score_batch(score_fn, state.codes, score_key)
        start = int(state.history.count)
        return state.replace(scores=scores, born=np.arange(start, start + P, dtype=np.int32), key=key,
                             cycle=np.asarray(1, np.int32), history=append(state.history, state.codes, scores))

    n = cfg.children_per_cycle if max_evals is None else min(cfg.children_per_cycle, max_evals)
    children = np.asarray(propose_children(jnp.asarray(propose_key), jnp.asarray(state.codes), jnp.asarray(state.scores),
                                           num_choices=state.num_choices, sample_size=cfg.sample_size,
                                           num_children=cfg.children_per_cycle))[:n]  # one compile, sliced
    scores = score_batch(score_fn, children, score_key)
    P, start = state.codes.shape[0], int(state.history.count)
    slots = (int(state.head) + np.arange(n)) % P  # the n oldest members
    codes, member_scores, born = np.array(state.codes), np.array(state.scores), np.array(state.born)
    codes[slots], member_scores[slots], born[slots] = children, scores, np.arange(start, start + n)
    return state.replace(codes=codes, scores=member_scores, born=born, head=np.asarray((int(state.head) + n) % P, np.int32),
                         key=key, cycle=np.asarray(int(state.cycle) + 1, np.int32),
                         history=append(state.history, children, scores))


@functools.partial(small_jit, static_argnames=("num_choices", "sample_size", "num_children"))
def propose_children(key, codes, scores, *, num_choices, sample_size, num_children):
    """``num_children`` mutated tournament winners, ``[num_children, D]`` (NaN scores never win)."""
    fitness = jnp.where(jnp.isnan(scores), -jnp.inf, scores)

    def one_child(child_key):
        sample_key, mutate_key = jax.random.split(child_key)
        sample = jnp.argsort(jax.random.uniform(sample_key, (codes.shape[0],)))[:sample_size]  # without replacement
        parent = codes[sample[jnp.argmax(fitness[sample])]]
        return mutate(mutate_key, parent, num_choices)

    return jax.vmap(one_child)(jax.random.split(key, num_children))

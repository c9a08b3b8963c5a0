"""Runs a named search strategy against a scorer until a budget of evaluations is spent.

Every strategy is a pair ``init(seed, num_choices, config) -> state`` and
``step(state, score_fn, config, *, max_evals) -> state``; a state is one pytree (population or
controller, optimizer state, rng key, history) that orbax saves whole, so passing a restored state
back to :func:`run_search` continues exactly where the saved run stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from archlab.train.nas.evolution import EvolutionState, evolution_step, init_evolution
from archlab.train.nas.history import History
from archlab.train.nas.random_search import SamplingState, grid_step, init_grid, init_random, random_step
from archlab.train.nas.reinforce import ReinforceState, init_reinforce, reinforce_step
from archlab.train.nas.scorer import ScoreFn
from archlab.train.nas.search_config import search_config
from archlab.train.nas.space_ops import num_codes


class Strategy(NamedTuple):
    init: Callable[..., Any]
    step: Callable[..., Any]
    state_type: type


STRATEGIES = {
    "evolution": Strategy(init_evolution, evolution_step, EvolutionState),
    "reinforce": Strategy(init_reinforce, reinforce_step, ReinforceState),
    "random": Strategy(init_random, random_step, SamplingState),
    "grid": Strategy(init_grid, grid_step, SamplingState),
}

# hook(state, new_codes [n, D], new_scores [n]) after every cycle: checkpoint, append to history.jsonl.
Hook = Callable[[Any, np.ndarray, np.ndarray], None]


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown search strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def init_search(strategy_name: str, num_choices, budget: int, config=None, seed: int = 0):
    """The fresh state ``run_search`` starts from (also the target structure for restoring a checkpoint)."""
    return get_strategy(strategy_name).init(seed, num_choices, search_config(config, budget=budget))


def run_search(strategy_name: str, score_fn: ScoreFn, num_choices, budget: int, config=None, seed: int = 0, *,
               state=None, hook: Hook | None = None, max_cycles: int | None = None):
    """Steps ``strategy_name`` until ``budget`` architectures (or the whole grid) are evaluated.

    Starts from ``state`` when given (a resumed run), else from ``init_search``. ``max_cycles`` stops
    early after that many steps of this call. Returns ``(state, history)``, the history trimmed to the
    evaluations made.
    """
    strategy = get_strategy(strategy_name)
    cfg = search_config(config, budget=budget)
    if state is None:
        state = strategy.init(seed, num_choices, cfg)
    elif not isinstance(state, strategy.state_type):
        raise ValueError(f"a {type(state).__name__} cannot continue a search with strategy {strategy_name!r}")
    target = min(cfg.budget, num_codes(state.num_choices)) if strategy_name == "grid" else cfg.budget
    if target > state.history.capacity:
        raise ValueError(f"the search state holds {state.history.capacity} evaluations, fewer than search.budget={cfg.budget}")
    cycles = 0
    while int(state.history.count) < target and (max_cycles is None or cycles < max_cycles):
        before = int(state.history.count)
        state = strategy.step(state, score_fn, cfg, max_evals=target - before)
        after = int(state.history.count)
        if after <= before:
            raise RuntimeError(f"{strategy_name} step evaluated nothing at {before}/{target}")
        if hook is not None:
            hook(state, np.asarray(state.history.codes[before:after]), np.asarray(state.history.scores[before:after]))
        cycles += 1
    return state, trimmed(state.history)


def trimmed(history: History) -> History:
    """The history's filled rows only, as a History whose capacity is its count."""
    codes, scores = history.filled
    return History(codes=codes, scores=scores, count=np.asarray(len(scores), np.int32))


def summarize_best(best_by_strategy: dict[str, Any], optimum: float | None = None) -> dict[str, dict]:
    """Mean and std of the best score each strategy found over seeds, and its regret when the optimum is known."""
    summary = {}
    for name, best in best_by_strategy.items():
        best = np.asarray(best, np.float64)
        row = {"runs": int(best.size), "best_mean": float(best.mean()), "best_std": float(best.std())}
        if optimum is not None:
            row.update(regret_mean=float((optimum - best).mean()), regret_std=float((optimum - best).std()))
        summary[name] = row
    return summary

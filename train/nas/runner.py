"""A NAS run in a workdir: each strategy for ``search.seeds`` seeds, resumable, then the outputs.

``run_strategies(config, strategies, workdir)`` runs each strategy over the space ``search.space``
names (``train.nas.config``), scored by ``train.nas.scorer.Scorer``. Each run lives in
``WORKDIR/<strategy>/seed_<n>/`` with its search state saved by orbax after every cycle (so the same
command resumes exactly) and ``history.jsonl`` (one row per evaluation: the member, score, cost,
strategy, seed). The workdir gets ``config.json``, ``best.json``, ``comparison.json`` and the plots
of ``train.nas.report``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from archlab.train.atomic_write import write_jsonl_atomically
from archlab.train.errors import SearchError
from archlab.train.nas.report import write_report
from archlab.train.nas.scorer import Scorer, describe_member
from archlab.train.nas.search import init_search, run_search, summarize_best
from archlab.train.nas.space_ops import num_codes

COMPARED = ("evolution", "reinforce", "random")  # --strategy=all


def _checkpointer(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False))


def _history_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _space_settings(config: dict) -> dict:
    """``search.space`` and its config section, JSON-normalised (tuples as lists), from a config as a dict."""
    space = config.get("search", {}).get("space", "cell")  # workdirs written before search.space searched cells
    return json.loads(json.dumps({"space": space, "settings": config.get(space) if space != "cell" else None}))


def check_same_space(config, workdir: str) -> None:
    """Refuses to resume a workdir whose saved search is over another space or grid (its codes would not fit)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = _space_settings(json.load(f))
    if saved != _space_settings(config.to_dict()):
        raise SearchError(f"workdir {workdir} holds a search over search.space={saved['space']} with other settings; "
                          f"use another --workdir for this search.space={config.search.space} search")


def _writes_files() -> bool:
    """Process 0 writes history, config, best, comparison and plots (every process runs the same search)."""
    return jax.process_index() == 0


def search_progress(strategy: str, seed: int, target: int, done: int, scores, *, enabled: bool) -> tqdm:
    """A bar of cells scored out of ``target`` for one strategy and seed, with the best score so far and
    tqdm's ETA (process 0 only; ``enabled`` False for cluster logs)."""
    bar = tqdm(total=target, initial=done, desc=f"{strategy} seed {seed}", unit="cell", dynamic_ncols=True, mininterval=0.5,
               disable=not (enabled and _writes_files()), file=sys.stdout)
    if len(scores):
        bar.set_postfix(best=f"{np.nanmax(scores):.2f}")
    return bar


def run_one(strategy: str, seed: int, config, scorer: Scorer, workdir: str, *, max_cycles: int | None = None, echo=print,
            progress: bool = False):
    """One strategy, one seed, resumable: returns its final strategy state and trimmed History.
    ``progress``: a bar per member batch scored (cells scored, best so far, ETA)."""
    run_dir = os.path.join(os.path.abspath(workdir), strategy, f"seed_{seed}")
    os.makedirs(run_dir, exist_ok=True)
    history_path = os.path.join(run_dir, "history.jsonl")
    budget = config.search.budget
    manager = _checkpointer(os.path.join(run_dir, "checkpoints"))
    state, bar = None, None
    try:
        if manager.latest_step() is not None:
            target = init_search(strategy, scorer.space.num_choices, budget, config, seed)
            state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))
            state = jax.tree.map(np.asarray, state)
            echo(f"{strategy} seed {seed}: resuming after {int(state.history.count)} evaluations")
        rows = _history_rows(history_path)[: 0 if state is None else int(state.history.count)]
        if _writes_files():
            write_jsonl_atomically(history_path, rows)  # drop rows of a cycle whose checkpoint was never written
        cycle_start = [time.time()]
        target = min(budget, num_codes(scorer.space.num_choices)) if strategy == "grid" else budget
        bar = search_progress(strategy, seed, target, len(rows), [r["score"] for r in rows], enabled=progress)

        def hook(new_state, codes, scores):
            cost = (time.time() - cycle_start[0]) / max(len(scores), 1)
            rows.extend({**describe_member(scorer.space, c), "score": float(s), "cost_s": round(cost, 4), "strategy": strategy,
                         "seed": seed} for c, s in zip(codes, scores))
            if _writes_files():
                write_jsonl_atomically(history_path, rows)
            manager.save(len(rows), args=ocp.args.StandardSave(new_state), force=True)
            cycle_start[0] = time.time()
            bar.update(len(scores))
            bar.set_postfix(best=f"{max(r['score'] for r in rows):.2f}")

        state, history = run_search(strategy, scorer.score_fn, scorer.space.num_choices, budget, config, seed, state=state, hook=hook,
                                    max_cycles=max_cycles)
    finally:
        if bar is not None:
            bar.close()
        manager.close()
    return state, history


def run_strategies(config, strategies: list[str], workdir: str, *, max_cycles: int | None = None, echo=print,
                   progress: bool = False) -> dict:
    """Every strategy x seed (resuming any that stopped), then best.json, comparison.json and plots;
    ``progress`` shows a bar per strategy and seed."""
    workdir = os.path.abspath(workdir)  # orbax wants absolute paths; notebooks pass relative ones
    check_same_space(config, workdir)
    scorer = Scorer(config)
    os.makedirs(workdir, exist_ok=True)
    if _writes_files():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2)
    results, best_overall = {}, None
    for strategy in strategies:
        for seed in range(config.seed, config.seed + config.search.seeds):
            started = time.time()
            state, history = run_one(strategy, seed, config, scorer, workdir, max_cycles=max_cycles, echo=echo, progress=progress)
            codes, scores = history.filled
            if len(scores) < min(config.search.budget, num_codes(scorer.space.num_choices) if strategy == "grid" else config.search.budget):
                echo(f"{strategy} seed {seed}: stopped after {len(scores)} evaluations (max_cycles); run again to resume")
                continue
            top = int(np.nanargmax(scores))
            results.setdefault(strategy, []).append(dict(seed=seed, best=float(scores[top]), codes=codes, scores=scores, state=state))
            echo(f"{strategy} seed {seed}: best {scores[top]:.2f} ({scorer.unit}) {scorer.space.describe(codes[top])}, "
                 f"{len(scores)} evaluated in {time.time() - started:.1f}s")
            if best_overall is None or scores[top] > best_overall["score"]:
                best_overall = {**scorer.best_fields(codes[top]), "score": float(scores[top]), "strategy": strategy, "seed": seed,
                                "scorer": scorer.kind, "unit": scorer.unit, "space": scorer.space_name}
    if best_overall is None:
        return {"complete": False}
    comparison = summarize_best({k: [r["best"] for r in v] for k, v in results.items()}, scorer.optimum)
    if not _writes_files():  # processes > 0 of a multi-host search computed the same results; process 0 writes them
        return {"complete": True, "best": best_overall, "comparison": comparison, "plots": []}
    plots = write_report(workdir, config, scorer, results, best_overall, comparison)
    return {"complete": True, "best": best_overall, "comparison": comparison, "plots": plots}

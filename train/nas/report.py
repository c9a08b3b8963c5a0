"""What a finished NAS run reports: the files its workdir keeps and the table the CLI prints.

``write_report`` writes ``best.json``, ``comparison.json``, the plots and the run summary;
``comparison_table`` formats ``train.nas.search.summarize_best``'s rows as markdown; ``plot_search``
draws best-so-far against evaluations per strategy and, for cells, the per-edge op frequencies of
each strategy's final population.
"""

from __future__ import annotations

import json
import os

import numpy as np

from archlab.arch.search_space import NUM_EDGES, NUM_OPS, OPS, op_frequencies
from archlab.train.figures import new_figure
from archlab.train.nas.history import best_so_far
from archlab.train.summary_writer import write_run_summary


def write_report(workdir: str, config, scorer, results: dict, best: dict, comparison: dict) -> list[str]:
    """``best.json``, ``comparison.json``, the plots and the run summary (TensorBoard scalars and
    images) of a finished search in ``workdir``; returns the plots' paths. ``results`` maps each
    strategy to its runs (seed, best, codes, scores, state); ``scorer`` is the run's Scorer."""
    with open(os.path.join(workdir, "best.json"), "w") as f:
        json.dump(best, f, indent=2)
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
        json.dump({"scorer": scorer.kind, "optimum": scorer.optimum, "budget": config.search.budget, "strategies": comparison}, f, indent=2)
    plots = plot_search(results, os.path.join(workdir, "plots"), scorer.unit, op_frequency_plots=scorer.space_name == "cell")
    scalars = {"best_score": best["score"], **{f"{name}_best_mean": row["best_mean"] for name, row in comparison.items()}}
    write_run_summary(workdir, config.to_dict(), step=config.search.budget, scalars=scalars, images=plots, prefix="nas")
    return plots


def comparison_table(comparison: dict, optimum: float | None) -> list[str]:
    """Markdown rows of ``summarize_best``'s comparison: best found per strategy, and regret when the optimum is known."""
    lines = ["| strategy | runs | best found (mean +- std) |" + (" regret (mean +- std) |" if optimum is not None else ""),
             "|---|---|---|" + ("---|" if optimum is not None else "")]
    for name, row in comparison.items():
        line = f"| {name} | {row['runs']} | {row['best_mean']:.2f} +- {row['best_std']:.2f} |"
        if optimum is not None:
            line += f" {row['regret_mean']:.2f} +- {row['regret_std']:.2f} |"
        lines.append(line)
    return lines


def plot_search(results: dict, out_dir: str, unit: str, *, op_frequency_plots: bool = True) -> list[str]:
    """best-so-far vs evaluations (mean over seeds per strategy) and (cells) the final population's per-edge op frequencies."""
    os.makedirs(out_dir, exist_ok=True)
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for strategy, runs in results.items():
        curves = [best_so_far(r["scores"]) for r in runs]
        n = min(len(c) for c in curves)
        mean = np.mean([c[:n] for c in curves], axis=0)
        ax.plot(np.arange(1, n + 1), mean, label=f"{strategy} ({len(curves)} seeds)")
    ax.set_xlabel("architectures evaluated")
    ax.set_ylabel(f"best so far: {unit}")
    ax.legend()
    fig.tight_layout()
    curve_path = os.path.join(out_dir, "best_so_far.png")
    fig.savefig(curve_path, dpi=100)

    paths = [curve_path]
    for strategy, runs in results.items() if op_frequency_plots else ():
        final = np.concatenate([_final_population(r) for r in runs])
        fig = new_figure(figsize=(6, 3.5))
        ax = fig.subplots()
        image = ax.imshow(op_frequencies(final), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(NUM_OPS), OPS, rotation=30, ha="right")
        ax.set_yticks(range(NUM_EDGES), [f"edge {e + 1}" for e in range(NUM_EDGES)])
        ax.set_title(f"{strategy}: op frequency per edge, final population")
        fig.colorbar(image)
        fig.tight_layout()
        path = os.path.join(out_dir, f"op_frequencies_{strategy}.png")
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def _final_population(run: dict) -> np.ndarray:
    state = run["state"]
    if hasattr(state, "born"):  # evolution: the living population
        return np.asarray(state.codes)
    return run["codes"][-min(len(run["codes"]), 20):]  # others: the last evaluations

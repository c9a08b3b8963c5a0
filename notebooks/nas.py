# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Neural architecture search: evolution vs REINFORCE, then train the cell
#
# The search space is NAS-Bench-201's cell: 4 nodes, 6 edges, each edge one of `none`,
# `skip_connect`, `nor_conv_1x1`, `nor_conv_3x3`, `avg_pool_3x3` (5^6 = 15,625 cells). This notebook
#
# 1. runs **regularized (aging) evolution** and an **LSTM controller trained by REINFORCE** side by side
#    (with random search as the floor), several seeds each, and plots best-so-far curves;
# 2. shows the **per-edge op heatmaps**: which op each edge picks, and how often, among the top
#    cells each strategy found, in evolution's final population and in the controller's policy;
# 3. **trains the best cell found** through the normal training path (`train.loop.train_and_evaluate`
#    with `model.genotype`, exactly what `python -m launch.train --model=nas_cell` runs), next to a
#    typical cell for contrast.
#
# Everything here is the library: `train/nas/` (`config.py`, `scorer.py`, `runner.py`: one resumable
# run per strategy and seed, `report.py`, and the strategies), the config in `configs/nas.py`, the space
# in `arch/search_space.py` and the cell network in `arch/nas_cell.py`.
#
# **Why a table scorer for the comparison.** Scoring a cell by training it is the honest signal, but on
# this 2-core CPU it costs tens of seconds per handful of cells (docs/nas.md: 40 cells in 16
# minutes; 8 cells at 10 steps took 21 s here on a loaded machine, mostly compilation), so a multi-seed comparison of
# strategies by training does not fit in a notebook. Comparing *strategies* needs many cheap,
# deterministic evaluations and a known optimum, which is what tabular benchmarks are for: the
# comparison uses `scorer.kind=table`, and real training is spent once, on the cell the search found.
# No NAS-Bench-201 download exists on this offline machine, so the table is the library's synthetic
# stand-in (`train.nas.benchmark_table.generate_table`: per-edge op effects, pairwise terms and noise,
# disconnected cells at chance; 3x3 convs help most on average). Point `scorer.table` at a converted
# NAS-Bench-201 CSV/JSON and every cell below runs unchanged on the real table.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from archlab.arch.search_space import EDGES, NUM_ARCHITECTURES, OPS, all_genotypes, genotype_to_string, is_disconnected, op_frequencies
from archlab.train.config import apply_overrides, get_config
from archlab.train.loop import train_and_evaluate
from archlab.train.workdir_setup import check_workdir
from archlab.train.metrics import read_metrics
from archlab.train.nas.benchmark_table import generate_table
from archlab.train.nas.history import best_so_far
from archlab.train.nas.reinforce import controller_probabilities
from archlab.train.nas.config import apply_nas_overrides, nas_config
from archlab.train.nas.report import comparison_table
from archlab.train.nas.runner import run_one
from archlab.train.nas.scorer import Scorer
from archlab.train.nas.search import summarize_best

SMOKE = os.environ.get("SMOKE") == "1"  # SMOKE=1 shrinks every budget so the notebook runs in well under a minute
ROOT = "runs/notebooks/nas" + ("_smoke" if SMOKE else "")  # a smoke run's budgets never resume into a full run's workdirs

BUDGET = 60 if SMOKE else 200  # cells evaluated per (strategy, seed) run
SEEDS = 2 if SMOKE else 3
TOP_K = 10 if SMOKE else 20  # "top cells" for the heatmaps
CELL_STEPS = 8 if SMOKE else 300  # training steps for each cell trained at the end
STRATEGIES = ("evolution", "reinforce", "random")
print(f"SMOKE={SMOKE}: {BUDGET} cells per run, {SEEDS} seeds, final cells trained {CELL_STEPS} steps; "
      f"space: {NUM_ARCHITECTURES:,} cells, edges (to, from) {EDGES}")

# %% [markdown]
# ## The scorer and the search config
#
# `nas_config()` is the complete default config of `python -m launch.nas` (`configs/nas.py`); the overrides below are its
# `--config.*` flags (`apply_nas_overrides` checks them as the CLI does). Evolution keeps a population of 20, picks
# parents by tournaments of 5 and replaces the oldest members with one-edge mutants, 4 per cycle;
# the controller samples 10 cells per policy-gradient update (moving-average baseline, entropy bonus);
# random search scores 16 uniform cells per call.

# %%
table_path = os.path.join(ROOT, "synthetic_nb201.csv")
table = generate_table(table_path)  # seeded: the same 15,625 scores every time
config = apply_nas_overrides(nas_config(), {
    "scorer.kind": "table", "scorer.table": table_path,
    "search.budget": str(BUDGET), "search.seeds": str(SEEDS),
    "search.population": "20", "search.sample_size": "5", "search.children_per_cycle": "4",
    "search.controller_batch": "10", "search.batch_size": "16",
})
scorer = Scorer(config)
print(f"scorer: {scorer.unit}, {len(table):,} cells; optimum {scorer.optimum:.2f} at {genotype_to_string(table.optimal_code)}")
disconnected = is_disconnected(all_genotypes())  # no path of non-`none` edges from input to output
print(f"median cell {np.median(table.scores):.2f}; {disconnected.sum():,} disconnected cells score "
      f"{table.scores[disconnected].mean():.1f} on average (chance is 10)")

# %% [markdown]
# ## Run each strategy, each seed
#
# `run_one` is what the CLI runs per (strategy, seed): it keeps the whole search state (population or
# controller and its Adam state, rng, history) as an orbax checkpoint per cycle in
# `ROOT/search/<strategy>/seed_<n>/` next to `history.jsonl`, so running this cell again resumes
# instead of searching again. It returns the final state and the history (every cell evaluated, in order).

# %%
search_dir = check_workdir(os.path.join(ROOT, "search"))  # absolute: orbax refuses relative checkpoint paths
runs = {}
for strategy in STRATEGIES:
    for seed in range(SEEDS):
        started = time.time()
        state, history = run_one(strategy, seed, config, scorer, search_dir)
        codes, scores = history.filled
        runs.setdefault(strategy, []).append({"seed": seed, "state": state, "codes": codes, "scores": scores})
        reached = np.flatnonzero(best_so_far(scores) >= scorer.optimum)
        print(f"{strategy:9s} seed {seed}: best {scores.max():.2f} after {len(scores)} cells "
              f"({'optimum at cell ' + str(reached[0] + 1) if reached.size else 'optimum not reached'}), {time.time() - started:.1f}s")

comparison = summarize_best({s: [r["scores"].max() for r in rs] for s, rs in runs.items()}, scorer.optimum)
print("\n".join(comparison_table(comparison, scorer.optimum)))

# %% [markdown]
# ## Best-so-far curves
#
# The best score found after each evaluation: the mean over seeds (line) and the range between the
# worst and best seed (band). Regret is the distance to the dashed optimum. Evolution spends its first
# 20 evaluations on a random population, so it starts like random search and pulls away once mutation
# exploits the good members; the controller learns a distribution over ops per edge and improves as
# its policy sharpens.

# %%
fig, (ax, ax_regret) = plt.subplots(1, 2, figsize=(11, 4))
for strategy, rs in runs.items():
    curves = np.stack([best_so_far(r["scores"]) for r in rs])
    x = np.arange(1, curves.shape[1] + 1)
    line, = ax.plot(x, curves.mean(0), label=f"{strategy} ({len(rs)} seeds)")
    ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    ax_regret.plot(x, scorer.optimum - curves.mean(0), color=line.get_color(), label=strategy)
ax.axhline(scorer.optimum, color="k", ls="--", lw=1, label="table optimum")
ax.set(xlabel="cells evaluated", ylabel=f"best so far ({scorer.unit})", title="best so far")
ax.set_ylim(np.percentile(table.scores[np.isfinite(table.scores)], 90), scorer.optimum + 1)
ax.legend()
ax_regret.set(xlabel="cells evaluated", ylabel="regret (optimum - best so far)", yscale="symlog", title="mean regret")
ax_regret.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Which op does each edge pick? Per-edge op heatmaps
#
# Each heatmap row is an edge of the cell (`to<-from` nodes), each column an op; a cell's value is the
# fraction of the cells in question that use that op on that edge (`arch.search_space.op_frequencies`,
# rows sum to 1). White dots mark the table optimum's op on each edge.
#
# Top row: the top cells each strategy evaluated (all seeds pooled). Bottom row: what each search
# *believes* at the end: evolution's living population, and the controller's policy (the LSTM's softmax
# per edge along its greedy path, `train.nas.reinforce.controller_probabilities`), for seed 0. The
# controller takes one update per 10 cells, so after a small budget its policy is still broad (by
# design: a policy that collapses early locks onto a wrong op); the top cells it sampled already lean
# towards the convolutions.

# %%
edge_labels = [f"{to}<-{frm}" for to, frm in EDGES]
optimal = np.asarray(table.optimal_code)


def heatmap(ax, frequencies, title):
    image = ax.imshow(frequencies, vmin=0, vmax=1, cmap="viridis")
    ax.scatter(optimal, np.arange(len(EDGES)), s=18, c="white", edgecolors="k", linewidths=0.5)
    ax.set_xticks(range(len(OPS)), OPS, rotation=35, ha="right")
    ax.set_yticks(range(len(EDGES)), edge_labels)
    ax.set_title(title, fontsize=10)
    return image


fig, axes = plt.subplots(2, 3, figsize=(13, 8.5), layout="constrained")
for ax, (strategy, rs) in zip(axes[0], runs.items()):
    top = np.concatenate([r["codes"][np.argsort(-r["scores"])[:TOP_K]] for r in rs])
    heatmap(ax, op_frequencies(top), f"{strategy}: top {TOP_K} per seed ({len(top)} cells)")
evolution_population = runs["evolution"][0]["state"].codes
heatmap(axes[1, 0], op_frequencies(evolution_population), f"evolution: final population ({len(evolution_population)})")
policy = controller_probabilities(runs["reinforce"][0]["state"])
image = heatmap(axes[1, 1], policy, "REINFORCE: controller policy")
everything = np.concatenate([r["codes"] for rs in runs.values() for r in rs])
heatmap(axes[1, 2], op_frequencies(everything), f"all {len(everything)} cells evaluated")
fig.colorbar(image, ax=axes, shrink=0.6, label="fraction of cells / probability")
plt.show()

print("controller's most likely op per edge:", genotype_to_string(policy.argmax(1)),
      "with probabilities", np.round(policy.max(1), 2))
print("table optimum:                       ", genotype_to_string(optimal))

# %% [markdown]
# ## Train the cell the search found
#
# The best cell over all runs goes through the normal training path: `get_config("nas_cell")` with
# `model.genotype` set, then `train.loop.train_and_evaluate`, the function behind
#
# ```bash
# python -m launch.train --model=nas_cell --workdir=runs/nas_cell --config.model.genotype='<the best genotype>'
# ```
#
# (digits at 16x16, AdamW, checkpoints and metrics in the workdir). For contrast, a *typical* cell, the
# median-scoring cell random search drew, is trained the same way. Its table score is synthetic, so
# this is a sanity check that the table's preferences (convolutions on the paths to the output) also
# train better on real images, not a measurement of the table.

# %%
best_strategy, best_run = max(((s, r) for s, rs in runs.items() for r in rs), key=lambda sr: sr[1]["scores"].max())
random_scores = runs["random"][0]["scores"]
cells = {"best found": best_run["codes"][best_run["scores"].argmax()]}
if not SMOKE:  # smoke mode trains the best cell only: each cell costs a compile of its own
    cells["typical"] = runs["random"][0]["codes"][np.argsort(random_scores)[len(random_scores) // 2]]
trained = {}
for name, code in cells.items():
    genotype = genotype_to_string(code)
    print(f"--- {name}: {genotype} (table score {table.score_fn(code[None])[0]:.2f})")
    cell_config = apply_overrides(get_config("nas_cell"), {
        "model.genotype": genotype, "train.steps": str(CELL_STEPS),
        "train.log_every": str(max(CELL_STEPS // 10, 1)), "train.eval_every": str(CELL_STEPS if SMOKE else CELL_STEPS // 3),
        "train.warmup_steps": str(min(50, CELL_STEPS // 5)), "checkpoint.every": str(CELL_STEPS),
    })
    workdir = os.path.join(ROOT, "cells", name.replace(" ", "_"))
    summary = train_and_evaluate(cell_config, workdir, progress=False)
    trained[name] = {"genotype": genotype, "summary": summary, "metrics": read_metrics(os.path.join(summary["workdir"], "metrics.jsonl"))}
print(f"\nbest cell found by {best_strategy} (seed {best_run['seed']})")

# %% [markdown]
# ## Training curves and held-out accuracy
#
# Train loss per logged step and the accuracy on the held-out split, read back from each workdir's
# `metrics.jsonl` (the same file the CLI writes). Both cells report the same parameter count:
# `NASCellNet` allocates a 1x1 and a 3x3 conv for every edge so that any genotype loads the
# population search's params unchanged; the genotype decides which of them are used.

# %%
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
for name, run in trained.items():
    train_rows = [m for m in run["metrics"] if m["split"] == "train"]
    eval_rows = [m for m in run["metrics"] if m["split"] != "train" and "accuracy" in m]
    ax_loss.plot([m["step"] for m in train_rows], [m["loss"] for m in train_rows], label=name)
    ax_acc.plot([m["step"] for m in eval_rows], [100 * m["accuracy"] for m in eval_rows], "o-", label=name)
ax_loss.set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
ax_acc.set(xlabel="step", ylabel="accuracy (%)", title="evaluation accuracy")
ax_loss.legend()
ax_acc.legend()
plt.tight_layout()
plt.show()

for name, run in trained.items():
    s = run["summary"]
    print(f"{name:10s} {run['genotype']}: {s['param_count']:,} params, step {s['step']}, "
          f"accuracy {100 * s['eval']['accuracy']:.2f} % (loss {s['eval']['loss']:.4f}), {s['train_seconds']:.0f}s of training")

# %% [markdown]
# ## From here
#
# - The same comparison from the command line, with `best.json`, `comparison.json` and plots in the workdir:
#   `python -m launch.nas --strategy=all --workdir=runs/nas_table --config.scorer.kind=table --config.scorer.table=runs/synthetic_nb201.csv --config.search.budget=200 --config.search.seeds=3`.
# - Search by training instead (slow on CPU; the same command resumes):
#   `python -m launch.nas --strategy=evolution --workdir=runs/nas_evolution`, or here: drop the
#   `scorer.*` overrides above (`scorer.kind=train` is the default) and lower `search.budget`.
# - A zero-cost proxy in between: `--config.scorer.kind=synflow`.

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The model zoo
#
# Every model archlab trains is one entry of the registry `arch.MODELS`: a module factory, a default
# `model` config, the task that trains it and an example input. This notebook walks the registry:
#
# 1. builds every entry from its default config (`train.config.get_config`);
# 2. prints the parameter and FLOPs summary that `python -m launch.train --model=NAME --summary`
#    prints (`train.model_summary.summarize_model`: XLA's own cost analysis, not a hand count);
# 3. shows one model's parameter tree (treescope in Jupyter, and a per-module table);
# 4. trains the CNN on the embedded digits with the same function the CLI calls
#    (`train.loop.train_and_evaluate`), reloads its checkpoint through `deploy.inference_model`, and
#    looks at its mistakes on the test split: a confusion matrix and the misclassified digits.
#
# `SMOKE=1` shrinks every step (one summary, 20 training steps) so CI runs it in well under a minute.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

SMOKE = os.environ.get("SMOKE") == "1"
WORKDIR = "runs/notebooks/model_zoo/cnn" + ("_smoke" if SMOKE else "")

# %% [markdown]
# ## 1. The registry
#
# One row per `--model=` name: the flax module its factory builds from the default config, the task
# (loss, metrics and data pipeline in `train/tasks/`) and the default `data.dataset` it trains on
# offline (`images` is scikit-learn's digits, `corpus` the stdlib's pydoc topics; see `train/data/`).

# %%
from archlab.arch import MODELS
from archlab.train.config import apply_overrides, get_config
from archlab.train.data import dataset_names

print(f"{'--model=':<16} {'module':<20} {'task':<15} {'data.dataset':<12} param groups")
for name, spec in MODELS.items():
    config = get_config(name)
    module = spec.make_module(config.model)
    data = config.data.dataset or dataset_names(spec.task)[0]
    print(f"{name:<16} {type(module).__name__:<20} {spec.task:<15} {data:<12} {', '.join(spec.param_groups) or '-'}")

# %% [markdown]
# ## 2. Parameters and FLOPs
#
# `summarize_model` initialises abstractly (`jax.eval_shape`: nothing is allocated) and compiles the
# forward pass and one full train step for a batch of 8, reading the FLOPs off XLA's cost analysis.
# Compiling is the cost (seconds per model on this CPU), so the notebook summarises one
# representative per family file in `arch/`; every other name works the same way
# (`python -m launch.train --model=resnet50 --summary`).

# %%
import time

from archlab.train.model_summary import summarize_model

REPRESENTATIVES = ["cnn"] if SMOKE else [
    "mlp", "cnn", "resnet18", "inception", "nas_cell", "dehaze", "lstm", "lstm_classifier", "transformer", "gan", "nerf",
]
summaries = {}
for name in REPRESENTATIVES:
    started = time.time()
    summaries[name] = summarize_model(get_config(name))
    print(f"summarised {name:<16} in {time.time() - started:4.1f} s")

print(f"\n{'model':<16} {'params':>10} {'fwd FLOPs/ex':>13} {'train FLOPs/ex':>15} {'train/fwd':>9}  input per example")
for name, s in summaries.items():
    ratio = s.train_flops_per_example / s.forward_flops_per_example
    print(f"{name:<16} {s.total_params:>10,} {s.forward_flops_per_example:>13.3g} {s.train_flops_per_example:>15.3g} "
          f"{ratio:>9.1f}  {s.input_shape}")

# %% [markdown]
# Parameters and compute are different axes: the recurrent and transformer LMs carry most of their
# parameters in embeddings and gates, while the convolutional models spend many FLOPs per parameter
# (each kernel is reused at every pixel). A train step costs roughly three forward passes (forward,
# backward for activations, backward for weights) plus the optimizer update.

# %%
fig, ax = plt.subplots(figsize=(6.5, 4.5))
for name, s in summaries.items():
    ax.scatter(s.total_params, s.forward_flops_per_example)
    ax.annotate(name, (s.total_params, s.forward_flops_per_example), fontsize=8, xytext=(4, 2), textcoords="offset points")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("parameters")
ax.set_ylabel("forward FLOPs per example (XLA)")
ax.set_title("registry models at their default configs")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The full summary of the CNN, exactly as `python -m launch.train --model=cnn --summary` prints it:

# %%
print(summaries["cnn"].table())

# %% [markdown]
# ## 3. Train the CNN on digits
#
# The same path as `python -m launch.train --model=cnn --config.train.steps=...`: the default config,
# with string overrides applied and type-checked by `apply_overrides`, handed to `train_and_evaluate`.
# The defaults (1,500 steps) reach 100 % on the 359 test digits, which leaves nothing to look at, so
# the full notebook stops at 300 steps, where the model still makes a few mistakes. The same
# workdir run again resumes from its checkpoint instead of starting over.

# %%
from archlab.train.loop import train_and_evaluate
from archlab.train.metrics import read_metrics

overrides = {"train.steps": "300", "train.eval_every": "100", "checkpoint.every": "100"}
if SMOKE:
    overrides = {"train.steps": "20", "train.warmup_steps": "5", "train.log_every": "5", "train.eval_every": "10",
                 "checkpoint.every": "10"}
config = apply_overrides(get_config("cnn"), overrides)
summary = train_and_evaluate(config, WORKDIR, progress=False)
print({k: summary[k] for k in ("step", "param_count", "eval")})

# %%
records = read_metrics(os.path.join(WORKDIR, "metrics.jsonl"))
fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
for split, style in (("train", "-"), ("eval", "o-")):
    logged = [r for r in records if r["split"] == split]
    loss_ax.plot([r["step"] for r in logged], [r["loss"] for r in logged], style, label=split)
    acc_ax.plot([r["step"] for r in logged], [r["accuracy"] for r in logged], style, label=split)
loss_ax.set_yscale("log")
loss_ax.set_title("cross-entropy (nats)")
acc_ax.set_title("accuracy (eval: the test split)")
for ax in (loss_ax, acc_ax):
    ax.set_xlabel("step")
    ax.legend()
plt.show()

# %% [markdown]
# ## 4. The trained model's parameter tree
#
# `deploy.inference_model.load_inference_model` restores the latest checkpoint with the trainer's own
# restore (`train.workdir.restore_params`) and returns the pure inference function plus its
# variables. The per-module table is the one `--summary` prints; in Jupyter, treescope renders the same
# tree interactively (fold and unfold modules; each array is shown with its shape, mean, spread and range).

# %%
import treescope
from IPython import get_ipython

from archlab.deploy.inference_model import load_inference_model
from archlab.train.model_summary import parameter_rows

model = load_inference_model(WORKDIR)
print(f"restored {model.model_name} at step {model.step}: input {model.input_name} {model.input_shape}, output {model.output_names}")
for path, shapes, count in parameter_rows(model.variables["params"]):
    print(f"  {path:<8} {count:>8,}  {shapes}")
if get_ipython() is not None:
    treescope.display(model.variables)

# %% [markdown]
# ## 5. Mistakes on the test split
#
# The test split is the run's own (read back from its `config.json`, built by the same
# `train.data.images.load_images` the trainer used), so the accuracy computed here from the restored
# checkpoint must match the loop's last evaluation.

# %%
from archlab.train.data.images import load_images
from archlab.train.workdir import load_run_info

run_config = load_run_info(WORKDIR)["config"]
images = load_images(run_config.data.path, run_config.data.image_size, run_config.data.val_fraction)
logits = model(images.x_test)[0]
predicted = np.asarray(logits).argmax(-1)
labels = images.y_test
accuracy = float(np.mean(predicted == labels))
print(f"test accuracy from the restored checkpoint: {100 * accuracy:.2f} % of {len(labels)} "
      f"(the loop's final evaluation: {100 * summary['eval']['accuracy']:.2f} %)")
assert abs(accuracy - summary["eval"]["accuracy"]) < 1e-6

# %%
num_classes = images.num_classes
confusion = np.zeros((num_classes, num_classes), np.int64)
np.add.at(confusion, (labels, predicted), 1)

fig, ax = plt.subplots(figsize=(5.5, 5))
ax.imshow(confusion, cmap="Blues")
for true in range(num_classes):
    for guess in range(num_classes):
        if confusion[true, guess]:
            color = "white" if confusion[true, guess] > confusion.max() / 2 else "black"
            ax.text(guess, true, confusion[true, guess], ha="center", va="center", fontsize=8, color=color)
ax.set_xticks(range(num_classes))
ax.set_yticks(range(num_classes))
ax.set_xlabel("predicted")
ax.set_ylabel("true")
ax.set_title(f"CNN on the digits test split, step {model.step}")
plt.show()
print("per-class recall:", {c: f"{confusion[c, c] / max(confusion[c].sum(), 1):.2f}" for c in range(num_classes)})

# %% [markdown]
# The misclassified digits, most confident mistakes first (the model's softmax probability of its
# wrong answer in the title). At 16x16 (upsampled from scikit-learn's 8x8) many are ambiguous even to
# a person.

# %%
shifted = logits - logits.max(-1, keepdims=True)
probabilities = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
wrong = np.flatnonzero(predicted != labels)
wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:16]
print(f"{int(np.sum(predicted != labels))} of {len(labels)} test digits misclassified")
if len(wrong):
    columns = min(len(wrong), 8)
    rows = -(-len(wrong) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, wrong):
        ax.imshow(images.x_test[index, ..., 0], cmap="gray_r")
        ax.set_title(f"{labels[index]} as {predicted[index]}\np={probabilities[index, predicted[index]]:.2f}", fontsize=8)
    fig.suptitle("misclassified test digits: true as predicted")
    fig.tight_layout()
    plt.show()

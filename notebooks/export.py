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
# # Export: a trained CNN as a TF SavedModel and an ONNX file, checked and timed
#
# A trained run ships as files other runtimes load: a TF SavedModel (through `jax2tf`, for TF
# Serving), an ONNX file (through `jax2onnx`, for onnxruntime and TensorRT) and, where an NVIDIA GPU
# and TensorRT are present, TensorRT engines built from that ONNX file. Every artifact is reloaded
# and compared with the JAX function it came from. This notebook trains a small CNN on the embedded
# digits, exports it with `deploy.pipeline.export_run` (what `python -m launch.export` calls), shows
# the parity table, and times each backend.

# %%
import collections
import os

import matplotlib.pyplot as plt
import numpy as np

from archlab.deploy.inference_model import jit_runner, load_inference_model
from archlab.deploy.latency import benchmark_backends, latency_table
from archlab.deploy.onnx_export import onnxruntime_runner
from archlab.deploy.pipeline import export_run
from archlab.deploy.saved_model import saved_model_runner
from archlab.train.config import apply_overrides, get_config
from archlab.train.loop import train_and_evaluate

SMOKE = os.environ.get("SMOKE") == "1"
WORKDIR = "runs/notebooks/export/cnn"
EXPORT_DIR = "runs/notebooks/export/cnn_export"
print(f"smoke mode: {SMOKE}")

# %% [markdown]
# ## Train a CNN
#
# The registry's `cnn` (conv32-pool-conv64-pool-dense128) on scikit-learn's digits upsampled to
# 16 px, through `train.loop.train_and_evaluate`, the function `python -m launch.train --model=cnn`
# calls. The full run is the CLI's default (1,500 steps); smoke mode trains a few steps, enough to
# have a checkpoint to export. Running the cell again resumes from the workdir's checkpoint.

# %%
overrides = {"train.steps": "20", "train.batch_size": "16", "train.log_every": "10", "train.eval_every": "20",
             "checkpoint.every": "20"} if SMOKE else {}
config = apply_overrides(get_config("cnn"), overrides)
summary = train_and_evaluate(config, WORKDIR, progress=False)
print({k: v for k, v in summary.items() if k in ("step", "eval")})

# %% [markdown]
# ## Export and check parity
#
# `export_run` restores the latest checkpoint as a pure inference function (BatchNorm frozen,
# dropout off), runs JAX on a fixed seeded batch at the smallest and largest batch sizes, then per
# format exports, reloads and compares: the SavedModel through `tf.saved_model.load`, the ONNX file
# through onnxruntime. A format passes when its max absolute error is within 1e-5 x max(1, max
# |logit|). TensorRT is asked for too: without the package or an NVIDIA GPU it is recorded as skipped,
# with the `trtexec` command for the ONNX file, and the other formats are unaffected.
#
# ONNX comes from `jax2onnx`, not from the SavedModel through `tf2onnx`: `jax2tf` now emits one
# `XlaCallModule` op holding StableHLO, which `tf2onnx` cannot convert.

# %%
BATCHES = (1, 4, 8) if SMOKE else (1, 8, 32)  # min, opt, max: the ONNX / TensorRT batch range
report = export_run(WORKDIR, EXPORT_DIR, formats=("saved_model", "onnx", "tensorrt"), batches=BATCHES)
print()
print("\n".join(report["table"]))
tensorrt = report["formats"].get("tensorrt", {})
if tensorrt.get("status") == "skipped":
    print(f"\nTensorRT skipped (missing {tensorrt['missing']})")

# %% [markdown]
# What was written, and what the ONNX graph holds: one input with a symbolic batch `B`, named
# outputs, and a short list of ops (the convolutions, pools and dense layers, plus the layout
# transposes jax2onnx places once at the input and before the flatten).

# %%
for name in sorted(os.listdir(EXPORT_DIR)):
    print(f"  {EXPORT_DIR}/{name}")
onnx_info = report["formats"]["onnx"]
print(f"\nONNX opset {onnx_info['opset']}: inputs {onnx_info['inputs']}, outputs {onnx_info['outputs']}")

import onnx  # noqa: E402

ops = collections.Counter(node.op_type for node in onnx.load(onnx_info["path"]).graph.node)
print("ops:", dict(sorted(ops.items(), key=lambda kv: -kv[1])))

# %% [markdown]
# ## Latency per backend
#
# Each backend is a callable `images -> logits as numpy`: JAX jit (the reference), the reloaded
# SavedModel, and an onnxruntime session with all graph optimisations (plus TensorRT engines where
# they were built). `deploy.latency.benchmark_backends` warms each up, then times them in
# alternating turns so that load on a shared machine falls on all of them alike; the table gives each
# backend's median next to JAX's at the same batch size. (`python -m launch.benchmark --suite=infer`
# is the longer version of this measurement.)

# %%
model = load_inference_model(WORKDIR, notify=lambda *a: None)
runners = {"jax_jit": jit_runner(model),
           "tf_saved_model": saved_model_runner(model, report["formats"]["saved_model"]["path"]),
           "onnxruntime": onnxruntime_runner(model, onnx_info["path"])}
for precision in ("fp32", "fp16"):
    engine = report["formats"].get(f"tensorrt_{precision}", {}).get("path")
    if engine:  # only where a GPU and TensorRT built it
        from archlab.deploy.tensorrt_engine import engine_runner

        runners[f"tensorrt_{precision}"] = engine_runner(engine, model)

timing_batches = (BATCHES[0], BATCHES[2])
inputs = {b: model.input_batch(b, seed=0) for b in timing_batches}
counts = dict(warmup=3, repeats=20, rounds=2) if SMOKE else dict(warmup=20, repeats=200, rounds=5)
latency = benchmark_backends(runners, inputs, **counts)
print("\n".join(latency_table(model.model_name, latency)))

agree = {name: float(np.mean(np.argmax(run(inputs[timing_batches[-1]])[0], -1) == np.argmax(
    runners["jax_jit"](inputs[timing_batches[-1]])[0], -1))) for name, run in runners.items()}
print(f"\nsame predicted class as JAX on the batch of {timing_batches[-1]}:", {k: f"{v:.0%}" for k, v in agree.items()})

# %%
fig, axes = plt.subplots(1, len(timing_batches), figsize=(5 * len(timing_batches), 3.8))
for ax, batch in zip(np.atleast_1d(axes), timing_batches):
    names = list(runners)
    p50 = np.array([latency[f"{n}@{batch}"]["p50_ms"] for n in names])
    p95 = np.array([latency[f"{n}@{batch}"]["p95_ms"] for n in names])
    bars = ax.bar(names, p50, yerr=[np.zeros_like(p50), p95 - p50], capsize=4, color=plt.cm.tab10(np.arange(len(names))))
    for bar, ms, top in zip(bars, p50, p95):
        ax.annotate(f"{p50[0] / ms:.2f}x", (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom",
                    xytext=(0, 2), textcoords="offset points", fontsize=9)
    ax.set_title(f"batch {batch}")
    ax.set_ylabel("ms per call")
    ax.margins(y=0.15)
    ax.tick_params(axis="x", labelrotation=15)
fig.suptitle(f"{model.model_name} at step {model.step}: median ms per call (whisker to p95), speed vs JAX jit above each bar")
fig.tight_layout()
plt.show()

# %% [markdown]
# On a quiet 2-core CPU (docs/export.md) onnxruntime is the fastest at both batch sizes
# (its optimiser turns the convs into its own blocked-layout kernels) and the SavedModel pays TF's
# per-call overhead at batch 1. On a shared machine these numbers move from run to run (the p95
# whiskers show how much); what does not move is the parity table. From a shell, the same export:
# `python -m launch.export --workdir=runs/cnn --out=runs/cnn_export --batch=1,8,32 --benchmark`.

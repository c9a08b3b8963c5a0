# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # archlab quickstart: train the byte-level transformer from Python
#
# The same functions `python -m launch.train --model=transformer` calls: `get_config` for the
# registry's default config, `apply_overrides` for `--config.*` flags, and `train_and_evaluate`, which
# trains (resuming from the workdir's latest checkpoint), evaluates on held-out text and writes
# `metrics.jsonl`, TensorBoard events, plots and checkpoints into the workdir.
#
# Set `SMOKE=1` in the environment to shrink everything to a seconds-sized run (the test suite does).

# %%
import os

import jax
import matplotlib.pyplot as plt

from archlab.train.config import apply_overrides, get_config
from archlab.train.loop import train_and_evaluate

SMOKE = os.environ.get("SMOKE") == "1"
WORKDIR = "runs/notebooks/quickstart"
print(f"jax {jax.__version__} on {jax.devices()[0].platform}, smoke mode: {SMOKE}")

# %% [markdown]
# ## Configure
#
# Overrides are the strings you would pass on the command line, without `--config.`. The full run is
# the default model (4 layers, d_model 128) for 400 steps: a few minutes on a 2-core CPU.

# %%
overrides = {"train.steps": "400", "train.eval_every": "100", "train.log_every": "25", "checkpoint.every": "200"}
if SMOKE:
    overrides.update({"model.num_layers": "2", "model.d_model": "32", "model.num_heads": "2", "model.mlp_dim": "64",
                      "model.max_len": "32", "data.seq_len": "32", "train.batch_size": "8", "train.steps": "30",
                      "train.warmup_steps": "3", "train.eval_every": "15", "train.log_every": "5",
                      "train.eval_batches": "2", "checkpoint.every": "15", "sample.length": "32"})
config = apply_overrides(get_config("transformer"), overrides)
print(config.model)

# %% [markdown]
# ## Train
#
# Running this cell again continues from the latest checkpoint in `WORKDIR` (a finished run just
# evaluates again). The returned summary holds the final step, the held-out metrics and a sample.

# %%
summary = train_and_evaluate(config, WORKDIR, progress=False)
print({k: v for k, v in summary.items() if k in ("step", "eval", "train_seconds")})

# %% [markdown]
# ## Loss curves from the workdir's metrics
#
# `metrics.jsonl` has one JSON object per logged event: `step`, `split` (`train` or `eval`) and the
# metrics. Held-out loss is in nats per byte; `bits_per_byte` is the same number in bits.

# %%
from archlab.train.metrics import read_metrics  # noqa: E402

records = read_metrics(os.path.join(WORKDIR, "metrics.jsonl"))
train_points = [(r["step"], r["loss"]) for r in records if r["split"] == "train" and "loss" in r]
eval_points = [(r["step"], r["loss"]) for r in records if r["split"] == "eval" and "loss" in r]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(*zip(*train_points), label="train")
ax.plot(*zip(*eval_points), "o-", label="held-out")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per byte)")
ax.legend()
plt.show()
print("last held-out record:", eval_points and [r for r in records if r["split"] == "eval"][-1])

# %% [markdown]
# ## Sample text from the latest checkpoint
#
# `restore_params` reads the newest intact checkpoint and the config saved with the run;
# `generate` decodes with a KV cache (what `python -m launch.sample` does).

# %%
from archlab.arch import get_model_spec  # noqa: E402
from archlab.train.sampling import generate  # noqa: E402
from archlab.train.workdir import restore_params  # noqa: E402

run_config, params, _, step = restore_params(WORKDIR)
decoder = get_model_spec(run_config.model_name).make_module(run_config.model, decode=True)
prompt = "The "
text = generate(decoder, params, prompt.encode(), 32 if SMOKE else 200, max_len=run_config.model.max_len,
                rng=jax.random.PRNGKey(0), temperature=0.8, top_k=0)
print(f"step {step}:\n{prompt + text.decode('utf-8', errors='replace')}")

# %% [markdown]
# ## What is in the workdir
#
# Checkpoints (orbax), `config.json` / run info, `metrics.jsonl`, TensorBoard events and plots.
# `tensorboard --logdir runs/notebooks` shows the same curves.

# %%
for root, dirs, files in sorted(os.walk(WORKDIR)):
    depth = root[len(WORKDIR):].count(os.sep)
    if depth <= 1:
        print("  " * depth + (os.path.basename(root) or WORKDIR) + "/", ", ".join(sorted(files)[:6]))

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
# # Generative models: a GAN on digits and a NeRF of a procedural scene
#
# Two registry models whose output is a picture rather than a number:
#
# - **`--model=gan`** (`arch/gan.py`): a small StyleGAN-style generator and discriminator, here on the
#   embedded digits (`data.dataset=digits`, 16x16). We train it in stages and draw the *same* latents
#   from each checkpoint, so the grids show one set of samples sharpening over training.
# - **`--model=nerf`** (`arch/nerf.py`): a positional-encoding MLP field with coarse and fine volume
#   rendering, trained on random rays of 64 views of the analytic scene in `train/data/nerf_scene.py`. We
#   render the 8 held-out camera poses (never trained on) next to their exact ray-cast ground truth.
#
# Both train through `train.loop.train_and_evaluate`, the function `python -m launch.train` calls,
# and are read back from their checkpoints through the library (`deploy.inference_model`,
# `train.nerf_views`). `SMOKE=1` shrinks both runs to a few steps of tiny models (and the GAN to one stage).

# %%
import os
import shutil

import matplotlib.pyplot as plt
import numpy as np

SMOKE = os.environ.get("SMOKE") == "1"
RUNS = "runs/notebooks/gan_and_nerf" + ("_smoke" if SMOKE else "")

# %% [markdown]
# ## 1. GAN: samples over training
#
# The digits defaults (`configs/gan.py:digits`: 3,000 steps) take too long for a notebook on this CPU; a
# few hundred steps already turn noise into digit strokes. `stop_at_step` ends a call of
# `train_and_evaluate` after saving a checkpoint, as a preemption would, and the next call with the
# same workdir resumes exactly there, so training in stages is the same run as training at once.
# After each stage, `load_inference_model` restores the generator (latents -> images) and we feed it
# a fixed batch of latents.

# %%
from archlab.deploy.inference_model import load_inference_model
from archlab.train.config import apply_overrides, get_config
from archlab.train.loop import train_and_evaluate

GAN_WORKDIR = os.path.join(RUNS, "gan")
STAGES = [10] if SMOKE else [50, 150, 300, 500]  # smoke: one stage (resuming is tested in tests/)
gan_overrides = {"data.dataset": "digits", "train.steps": str(STAGES[-1]), "train.log_every": "25", "train.eval_every": "1000",
                 "checkpoint.every": "1000"}
if SMOKE:
    gan_overrides.update({"train.log_every": "5", "train.eval_every": "100", "checkpoint.every": "10", "train.warmup_steps": "2",
                          "train.batch_size": "16", "data.eval_samples": "32", "data.image_size": "8", "model.latent_dim": "8",
                          "model.style_dim": "16", "model.width": "8", "model.disc_width": "8"})
gan_config = apply_overrides(get_config("gan"), gan_overrides)
shutil.rmtree(GAN_WORKDIR, ignore_errors=True)  # the staged samples below need this run from step 0

latents = np.random.default_rng(0).standard_normal((10, gan_config.model.latent_dim)).astype(np.float32)
samples_by_step = {}
for stop in STAGES:
    gan_summary = train_and_evaluate(gan_config, GAN_WORKDIR, stop_at_step=stop, progress=False)
    generator = load_inference_model(GAN_WORKDIR, notify=lambda *a: None)
    samples_by_step[generator.step] = np.clip(generator(latents)[0], 0.0, 1.0)
print(f"final evaluation at step {gan_summary['step']}: {gan_summary['eval']}")

# %% [markdown]
# Each row is one checkpoint; each column one fixed latent vector. The bottom row is real training
# digits at the same resolution, for reference.

# %%
from archlab.train.data.images import load_images
from archlab.train.workdir import load_run_info

gan_run = load_run_info(GAN_WORKDIR)["config"]
real = load_images(gan_run.data.path, gan_run.data.image_size, gan_run.data.val_fraction).x_train[: len(latents)]
rows = [(f"step {step}", samples) for step, samples in samples_by_step.items()] + [("real digits", real)]
fig, axes = plt.subplots(len(rows), 1, figsize=(1.0 * len(latents), 1.1 * len(rows)))
for ax, (label, images) in zip(axes, rows):
    ax.imshow(np.concatenate(list(images[..., 0]), axis=1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
fig.suptitle("GAN samples from the same latents at each checkpoint")
fig.tight_layout()
plt.show()

# %% [markdown]
# The two players' losses and the discriminator's mean output on real and generated batches. A
# discriminator that wins outright (`d_real` near 1, `d_fake` near 0) would starve the generator of
# gradient; the R1 penalty (`model.r1_gamma`) keeps it from getting there.

# %%
from archlab.train.metrics import read_metrics

gan_records = [r for r in read_metrics(os.path.join(GAN_WORKDIR, "metrics.jsonl")) if r["split"] == "train"]
steps = [r["step"] for r in gan_records]
fig, (loss_ax, d_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
for key in ("d_loss", "g_loss"):
    loss_ax.plot(steps, [r[key] for r in gan_records], label=key)
for key in ("d_real", "d_fake"):
    d_ax.plot(steps, [r[key] for r in gan_records], label=key)
loss_ax.set_title("losses (train, mean over each logging window)")
d_ax.set_title("discriminator's mean sigmoid output")
for ax in (loss_ax, d_ax):
    ax.set_xlabel("step")
    ax.legend()
plt.show()

# %% [markdown]
# ## 2. NeRF: held-out views against ground truth
#
# The default run (2,000 steps, 32x32 views) reaches its figure in the README's model table; the notebook trains a
# shorter run of the same model. The loop already evaluates PSNR on every held-out ray;
# `train.nerf_views.render_held_out_views` restores the checkpoint and renders those rays back into
# images, so we can look at them. The mean of its per-view PSNRs is the loop's `psnr_view_mean`.

# %%
from archlab.train.nerf_views import psnr_per_image, render_held_out_views

NERF_WORKDIR = os.path.join(RUNS, "nerf")
nerf_overrides = {"train.steps": "300", "train.eval_every": "100", "checkpoint.every": "300"}
if SMOKE:
    nerf_overrides = {"train.steps": "10", "train.batch_size": "64", "train.warmup_steps": "2", "train.log_every": "5",
                      "train.eval_every": "100", "checkpoint.every": "10", "data.image_size": "12", "model.width": "16",
                      "model.num_layers": "2", "model.num_coarse": "8", "model.num_fine": "8"}
nerf_config = apply_overrides(get_config("nerf"), nerf_overrides)
nerf_summary = train_and_evaluate(nerf_config, NERF_WORKDIR, progress=False)
views = render_held_out_views(NERF_WORKDIR, notify=lambda *a: None)

blank = psnr_per_image(np.ones_like(views.truth), views.truth)  # a render of nothing but the white background
print(f"step {views.step}: PSNR per held-out view (dB): {np.array2string(views.psnr, precision=2)}")
print(f"mean {views.psnr.mean():.2f} dB (the loop's psnr_view_mean: {nerf_summary['eval']['psnr_view_mean']:.2f} dB; "
      f"over all pixels: {nerf_summary['eval']['psnr']:.2f} dB); an empty white render scores {blank.mean():.2f} dB")

# %% [markdown]
# Top to bottom: the exact ray-cast ground truth, the NeRF's fine render (titled with its PSNR), the
# per-pixel absolute error, and the rendered depth (expected distance along each ray). Errors
# concentrate on silhouettes and small shapes; flat colours are learnt first.

# %%
error = np.abs(np.clip(views.rgb, 0, 1) - views.truth).mean(-1)
count = len(views.truth)
fig, axes = plt.subplots(4, count, figsize=(1.5 * count + 0.6, 6.4), squeeze=False)
for v in range(count):
    panels = [(views.truth[v], {}, f"view {v}"), (np.clip(views.rgb[v], 0, 1), {}, f"{views.psnr[v]:.1f} dB"),
              (error[v], dict(cmap="magma", vmin=0, vmax=0.5), ""),
              (views.depth[v], dict(cmap="viridis_r", vmin=views.near, vmax=views.far), "")]
    for row, (image, style, title) in enumerate(panels):
        axes[row, v].imshow(image, interpolation="nearest", **style)
        axes[row, v].set_xticks([])
        axes[row, v].set_yticks([])
        axes[row, v].set_title(title, fontsize=8)
for row, name in enumerate(("ground truth", "NeRF render", "|error|", "depth")):
    axes[row, 0].set_ylabel(name, fontsize=9)
fig.suptitle(f"NeRF on held-out poses, step {views.step}")
fig.tight_layout()
plt.show()

# %% [markdown]
# Held-out PSNR over training (fine and coarse renders): the fine network samples where the coarse
# one found density, so it should stay ahead.

# %%
nerf_eval = [r for r in read_metrics(os.path.join(NERF_WORKDIR, "metrics.jsonl")) if r["split"] == "eval"]
nerf_train = [r for r in read_metrics(os.path.join(NERF_WORKDIR, "metrics.jsonl")) if r["split"] == "train"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([r["step"] for r in nerf_train], [r["psnr"] for r in nerf_train], label="train batches (fine)")
ax.plot([r["step"] for r in nerf_eval], [r["psnr"] for r in nerf_eval], "o-", label="held-out views (fine)")
ax.plot([r["step"] for r in nerf_eval], [r["psnr_coarse"] for r in nerf_eval], "o--", label="held-out views (coarse)")
ax.axhline(blank.mean(), color="grey", linestyle=":", label="empty white render")
ax.set_xlabel("step")
ax.set_ylabel("PSNR (dB)")
ax.legend(fontsize=8)
plt.show()

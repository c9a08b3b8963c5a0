"""Loss and metrics per task. A task tells the generic train/eval steps what to optimise.

``loss_fn(module, params, model_state, batch, rng, train) -> (loss, (metrics, new_model_state))``
is differentiated by the train step. ``eval_sums`` returns per-batch *sums* weighted by a
per-example mask so padded evaluation batches and sharded evaluation add up exactly;
``summarize`` turns accumulated sums into the reported metrics. Tasks live here, not per model:
a registry entry names its task, and a new family reuses one or extends this file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    loss_fn: Callable[..., Any]
    eval_sums: Callable[..., dict]
    summarize: Callable[[dict], dict]
    report: Callable[[dict], str]  # one human line for the final evaluation
    # Optional: plot(module, params, model_state, dataset, plot_dir, step) -> [paths], called at
    # every evaluation and at the end (e.g. GAN sample grids, NeRF views next to ground truth).
    plot: Callable[..., list] | None = None


# --- language modelling: batch is int tokens [B, T+1]; predict tokens[:, 1:] from tokens[:, :-1].


def _lm_loss(module, params, model_state, batch, rng, train: bool):
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    logits = module.apply(
        {"params": params, **model_state},
        inputs,
        deterministic=not train,
        rngs={"dropout": rng} if train else None,
    )
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    loss = jnp.mean(token_loss)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == targets)
    metrics = {"loss": loss, "bits_per_byte": loss / LN2, "accuracy": accuracy}
    return loss, (metrics, model_state)


def _lm_eval_sums(module, params, model_state, batch, weights):
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    logits = module.apply({"params": params, **model_state}, inputs, deterministic=True)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    w = weights[:, None].astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(token_loss * w),
        "correct_sum": jnp.sum((jnp.argmax(logits, -1) == targets) * w),
        "count": jnp.sum(w) * targets.shape[1],
    }


def _lm_summarize(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    loss = float(sums["loss_sum"]) / count
    return {"loss": loss, "bits_per_byte": loss / LN2, "accuracy": float(sums["correct_sum"]) / count}


def _lm_report(metrics: dict) -> str:
    return f"loss {metrics['loss']:.4f} nats = {metrics['bits_per_byte']:.3f} bits per byte (accuracy {metrics['accuracy']:.3f})"


LM = Task("lm", _lm_loss, _lm_eval_sums, _lm_summarize, _lm_report)


# --- classification: batch is {"inputs": [B, ...], "labels": int [B]}. Mutable collections
# (BatchNorm's batch_stats) update in training and are read frozen in evaluation.


def _apply_classifier(module, params, model_state, inputs, rng, train: bool):
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if train else None
    if train and model_state:
        logits, updates = module.apply(variables, inputs, deterministic=False, rngs=rngs, mutable=list(model_state))
        return logits, dict(updates)
    return module.apply(variables, inputs, deterministic=not train, rngs=rngs), model_state


def _classification_loss(module, params, model_state, batch, rng, train: bool):
    logits, new_model_state = _apply_classifier(module, params, model_state, batch["inputs"], rng, train)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
    return loss, ({"loss": loss, "accuracy": accuracy}, new_model_state)


def _classification_eval_sums(module, params, model_state, batch, weights):
    logits, _ = _apply_classifier(module, params, model_state, batch["inputs"], None, False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return {
        "loss_sum": jnp.sum(loss * weights),
        "correct_sum": jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * weights),
        "count": jnp.sum(weights),
    }


def _classification_summarize(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct_sum"]) / count}


def _classification_report(metrics: dict) -> str:
    return f"accuracy {100 * metrics['accuracy']:.2f} % (loss {metrics['loss']:.4f})"


CLASSIFICATION = Task(
    "classification", _classification_loss, _classification_eval_sums, _classification_summarize, _classification_report
)

# --- GAN: batch is {"inputs": real samples}; params {"generator", "discriminator"} (two optimizers).
# One scalar carries both players' losses; stop_gradient makes each player's gradient exactly its
# own loss's (d/dD of d_loss, d/dG of g_loss), so the generic step does simultaneous GAN updates.


def _gan_losses(module, params, batch, rng, r1_gamma: float):
    real = batch["inputs"]
    z = jax.random.normal(rng, (real.shape[0], module.latent_dim), real.dtype)
    fake = module.apply({"params": params}, z, method="generate")
    frozen_d = {"generator": params["generator"], "discriminator": jax.lax.stop_gradient(params["discriminator"])}

    def d_logits(x):
        return module.apply({"params": params}, x, method="discriminate")

    real_logits = d_logits(real)
    fake_logits = d_logits(jax.lax.stop_gradient(fake))
    d_loss = jnp.mean(jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits))
    g_loss = jnp.mean(jax.nn.softplus(-module.apply({"params": frozen_d}, fake, method="discriminate")))
    metrics = {"d_loss": d_loss, "g_loss": g_loss, "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
               "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits))}
    if r1_gamma > 0:  # R1: penalise the discriminator's gradient on real data (Mescheder et al. 2018)
        grad_real = jax.grad(lambda x: jnp.sum(d_logits(x)))(real)
        r1 = jnp.mean(jnp.sum(jnp.square(grad_real.reshape(real.shape[0], -1)), -1))
        d_loss = d_loss + 0.5 * r1_gamma * r1
        metrics["r1"] = r1
    return d_loss, g_loss, metrics


def _gan_loss(module, params, model_state, batch, rng, train: bool):
    d_loss, g_loss, metrics = _gan_losses(module, params, batch, rng, module.r1_gamma)
    loss = d_loss + g_loss
    return loss, (dict(metrics, loss=loss), model_state)


def mode_coverage_sums(samples, centers, std: float, weights):
    """Per-mode counts of high-quality samples (within 3 std of their nearest mode), as sums."""
    distances = jnp.linalg.norm(samples[:, None, :] - centers[None], axis=-1)
    nearest = jnp.argmin(distances, -1)
    high_quality = (jnp.min(distances, -1) < 3 * std) * weights
    per_mode = jnp.sum(jax.nn.one_hot(nearest, centers.shape[0]) * high_quality[:, None], 0)
    return {"mode_counts": per_mode, "high_quality_sum": jnp.sum(high_quality), "count": jnp.sum(weights)}


def mode_coverage(sums: dict, min_share: float = 0.25) -> dict:
    """A mode is covered when it holds >= ``min_share`` of a uniform share of the high-quality
    samples' total (with 8 modes and 0.25: >= 3.1 % of all samples); also the fraction of samples
    within 3 std of a mode."""
    counts = np.asarray(sums["mode_counts"], np.float64)
    total = max(float(sums["count"]), 1.0)
    return {
        "modes_covered": int(np.sum(counts >= min_share * total / len(counts))),
        "high_quality_fraction": float(sums["high_quality_sum"]) / total,
    }


def _gan_eval_sums(module, params, model_state, batch, weights):
    from archlab.train.gan_data import RING_STD, ring_centers

    fake = module.apply({"params": params}, batch["latents"], method="generate")
    real_logits = module.apply({"params": params}, batch["inputs"], method="discriminate")
    fake_logits = module.apply({"params": params}, fake, method="discriminate")
    sums = {
        "d_loss_sum": jnp.sum((jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)) * weights),
        "g_loss_sum": jnp.sum(jax.nn.softplus(-fake_logits) * weights),
        "count": jnp.sum(weights),
    }
    if fake.ndim == 2 and fake.shape[-1] == 2:  # the ring: mode coverage
        sums.update(mode_coverage_sums(fake, jnp.asarray(ring_centers()), RING_STD, weights))
    return sums


def _gan_summarize(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    d_loss, g_loss = float(sums["d_loss_sum"]) / count, float(sums["g_loss_sum"]) / count
    result = {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}
    if "mode_counts" in sums:
        result.update(mode_coverage(sums))
    return result


def _gan_report(metrics: dict) -> str:
    line = f"discriminator loss {metrics['d_loss']:.3f}, generator loss {metrics['g_loss']:.3f}"
    if "modes_covered" in metrics:
        line = (f"{metrics['modes_covered']} of 8 modes covered, {100 * metrics['high_quality_fraction']:.1f} % of samples "
                f"within 3 std of a mode ({line})")
    return line


def _gan_plot(module, params, model_state, dataset, plot_dir, step):
    import os

    from archlab.train import figures

    latents = dataset.eval_batches[0][0]["latents"]
    if dataset.extras.get("kind") == "ring":
        latents = np.concatenate([b["latents"] for b, _ in dataset.eval_batches])
    samples = np.asarray(jax.jit(lambda p, z: module.apply({"params": p}, z, method="generate"))(params, latents))
    paths = []
    for name in (f"samples_step{step:06d}.png", "samples.png"):
        path = os.path.join(plot_dir, name)
        title = f"generated samples at step {step}"
        if dataset.extras.get("kind") == "ring":
            paths.append(figures.point_cloud(samples, dataset.extras["centers"], dataset.extras["std"], path, title=title))
        else:
            paths.append(figures.image_grid(samples[:64], path, title=title))
    return paths


GAN = Task("gan", _gan_loss, _gan_eval_sums, _gan_summarize, _gan_report, plot=_gan_plot)

# --- NeRF: batch is {"rays": [B, 6], "rgb": [B, 3]}; the loss is the MSE of the coarse plus the fine
# render. Held-out PSNR ("psnr") is that of the mean squared error over all held-out pixels;
# "psnr_view_mean" is the mean of the per-view PSNRs (evaluation batches carry a view one-hot).


def _psnr(mse):
    return -10.0 * jnp.log10(mse)


def _nerf_loss(module, params, model_state, batch, rng, train: bool):
    out = module.apply({"params": params, **model_state}, batch["rays"], deterministic=not train, rngs={"dropout": rng} if train else None)
    mse = jnp.mean((out["rgb"] - batch["rgb"]) ** 2)
    mse_coarse = jnp.mean((out["rgb_coarse"] - batch["rgb"]) ** 2)
    loss = mse + mse_coarse
    return loss, ({"loss": loss, "psnr": _psnr(mse), "psnr_coarse": _psnr(mse_coarse)}, model_state)


def _nerf_eval_sums(module, params, model_state, batch, weights):
    out = module.apply({"params": params, **model_state}, batch["rays"], deterministic=True)
    squared = jnp.sum((out["rgb"] - batch["rgb"]) ** 2, axis=-1) * weights  # per ray, summed over channels
    squared_coarse = jnp.sum((out["rgb_coarse"] - batch["rgb"]) ** 2, axis=-1) * weights
    sums = {"squared_error_sum": jnp.sum(squared), "squared_error_coarse_sum": jnp.sum(squared_coarse), "count": 3 * jnp.sum(weights)}
    if "view_onehot" in batch:
        sums["view_squared_error_sum"] = squared @ batch["view_onehot"]
        sums["view_count"] = 3 * (weights @ batch["view_onehot"])
    return sums


def _nerf_summarize(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    mse, mse_coarse = float(sums["squared_error_sum"]) / count, float(sums["squared_error_coarse_sum"]) / count
    metrics = {"loss": mse + mse_coarse, "psnr": float(_psnr(max(mse, 1e-12))), "psnr_coarse": float(_psnr(max(mse_coarse, 1e-12)))}
    if "view_count" in sums:
        view_count = np.asarray(sums["view_count"], np.float64)
        view_mse = np.asarray(sums["view_squared_error_sum"], np.float64)[view_count > 0] / view_count[view_count > 0]
        metrics["psnr_view_mean"] = float(np.mean(-10.0 * np.log10(np.maximum(view_mse, 1e-12))))
    return metrics


def _nerf_report(metrics: dict) -> str:
    line = f"PSNR {metrics['psnr']:.2f} dB (of the mean MSE over all pixels; coarse {metrics['psnr_coarse']:.2f} dB"
    if "psnr_view_mean" in metrics:
        line += f"; mean of per-view PSNRs {metrics['psnr_view_mean']:.2f} dB"
    return line + f"; loss {metrics['loss']:.5f})"


def _nerf_plot(module, params, model_state, dataset, plot_dir, step, chunk: int = 2048):
    import os
    import shutil

    from archlab.train.nerf_views import render_rays_in_chunks
    from archlab.train.scene import plot_views

    rendered = render_rays_in_chunks(module, params, model_state, dataset.extras["rays"], chunk)  # views [V, H, W, 6]
    path = plot_views(dataset.extras["views"], rendered["rgb"], rendered["depth"], os.path.join(plot_dir, f"views_step{step:06d}.png"),
                      depth_range=(module.near, module.far), title=f"held-out views at step {step}: ground truth, NeRF render, depth")
    latest = os.path.join(plot_dir, "views.png")
    shutil.copyfile(path, latest)
    return [path, latest]


NERF = Task("nerf", _nerf_loss, _nerf_eval_sums, _nerf_summarize, _nerf_report, plot=_nerf_plot)

# --- restoration: batch is {"inputs": degraded images, "targets": clean images} [B, H, W, C] in
# [0, 1]; the model maps inputs to restored images. Loss: MSE. "psnr" is the mean of per-image PSNRs
# of the restored image (clipped to [0, 1]); "input_psnr" is the same for the degraded input
# itself, the do-nothing baseline, measured on the same images.


def image_psnr(images, targets, max_value: float = 1.0):
    """Per-image PSNR in dB, [B], of ``images`` clipped to [0, max_value] against ``targets``."""
    error = jnp.clip(images, 0.0, max_value) - targets
    mse = jnp.mean(jnp.square(error).reshape(error.shape[0], -1), axis=-1)
    return 10.0 * jnp.log10(max_value**2 / jnp.maximum(mse, 1e-10))


def _restoration_loss(module, params, model_state, batch, rng, train: bool):
    restored, new_model_state = _apply_classifier(module, params, model_state, batch["inputs"], rng, train)
    loss = jnp.mean(jnp.square(restored - batch["targets"]))
    return loss, ({"loss": loss, "psnr": jnp.mean(image_psnr(restored, batch["targets"]))}, new_model_state)


def _restoration_eval_sums(module, params, model_state, batch, weights):
    restored, _ = _apply_classifier(module, params, model_state, batch["inputs"], None, False)
    targets = batch["targets"]
    mse = jnp.mean(jnp.square(restored - targets).reshape(targets.shape[0], -1), axis=-1)
    return {
        "loss_sum": jnp.sum(mse * weights),
        "psnr_sum": jnp.sum(image_psnr(restored, targets) * weights),
        "input_psnr_sum": jnp.sum(image_psnr(batch["inputs"], targets) * weights),
        "count": jnp.sum(weights),
    }


def _restoration_summarize(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    return {name: float(sums[f"{name}_sum"]) / count for name in ("loss", "psnr", "input_psnr")}


def _restoration_report(metrics: dict) -> str:
    return (f"PSNR {metrics['psnr']:.2f} dB restored vs {metrics['input_psnr']:.2f} dB for the degraded input itself "
            f"(+{metrics['psnr'] - metrics['input_psnr']:.2f} dB; MSE {metrics['loss']:.5f})")


def _restoration_plot(module, params, model_state, dataset, plot_dir, step):
    """Rows of degraded | restored | clean held-out images (``dataset.extras`` plot_inputs/targets)."""
    import os
    import shutil

    from archlab.train import figures

    inputs, targets = dataset.extras["plot_inputs"], dataset.extras["plot_targets"]
    restored = np.asarray(module.apply({"params": params, **model_state}, jnp.asarray(inputs), deterministic=True))
    path = figures.image_grid(np.concatenate([inputs, restored, targets]), os.path.join(plot_dir, f"restoration_step{step:06d}.png"),
                              columns=len(inputs), title=f"step {step}, rows: degraded input | restored | clean target")
    latest = os.path.join(plot_dir, "restoration.png")
    shutil.copyfile(path, latest)
    return [path, latest]


RESTORATION = Task("restoration", _restoration_loss, _restoration_eval_sums, _restoration_summarize, _restoration_report,
                   plot=_restoration_plot)

TASKS: dict[str, Task] = {"lm": LM, "classification": CLASSIFICATION, "gan": GAN, "nerf": NERF, "restoration": RESTORATION}


def get_task(name: str) -> Task:
    return TASKS[name]

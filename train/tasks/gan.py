"""GANs: the non-saturating losses with R1, mode coverage of the ring of Gaussians, sample grids.

GAN: batch is {"inputs": real samples}; params {"generator", "discriminator"} (two optimizers). One scalar carries both players' losses; stop_gradient makes each player's gradient exactly its own loss's (d/dD of d_loss, d/dG of g_loss), so the generic step does simultaneous GAN updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from archlab.train import figures
from archlab.train.data.gan import RING_STD, ring_centers
from archlab.train.tasks.base import Task


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

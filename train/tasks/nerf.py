"""NeRF: the coarse plus fine render MSE, held-out PSNR, rendered views next to the truth.

NeRF: batch is {"rays": [B, 6], "rgb": [B, 3]}; the loss is the MSE of the coarse plus the fine render. Held-out PSNR ("psnr") is that of the mean squared error over all held-out pixels; "psnr_view_mean" is the mean of the per-view PSNRs (evaluation batches carry a view one-hot).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from archlab.train.data.nerf_scene import plot_views
from archlab.train.image_metrics import psnr
from archlab.train.nerf_views import render_rays_in_chunks
from archlab.train.tasks.base import Task


def _nerf_loss(module, params, model_state, batch, rng, train: bool):
    out = module.apply({"params": params, **model_state}, batch["rays"], deterministic=not train, rngs={"dropout": rng} if train else None)
    mse = jnp.mean((out["rgb"] - batch["rgb"]) ** 2)
    mse_coarse = jnp.mean((out["rgb_coarse"] - batch["rgb"]) ** 2)
    loss = mse + mse_coarse
    return loss, ({"loss": loss, "psnr": psnr(mse), "psnr_coarse": psnr(mse_coarse)}, model_state)


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
    metrics = {"loss": mse + mse_coarse, "psnr": float(psnr(mse)), "psnr_coarse": float(psnr(mse_coarse))}
    if "view_count" in sums:
        view_count = np.asarray(sums["view_count"], np.float64)
        view_mse = np.asarray(sums["view_squared_error_sum"], np.float64)[view_count > 0] / view_count[view_count > 0]
        metrics["psnr_view_mean"] = float(np.mean(psnr(view_mse)))
    return metrics


def _nerf_report(metrics: dict) -> str:
    line = f"PSNR {metrics['psnr']:.2f} dB (of the mean MSE over all pixels; coarse {metrics['psnr_coarse']:.2f} dB"
    if "psnr_view_mean" in metrics:
        line += f"; mean of per-view PSNRs {metrics['psnr_view_mean']:.2f} dB"
    return line + f"; loss {metrics['loss']:.5f})"


def _nerf_plot(module, params, model_state, dataset, plot_dir, step, chunk: int = 2048):
    import os
    import shutil

    rendered = render_rays_in_chunks(module, params, model_state, dataset.extras["rays"], chunk)  # views [V, H, W, 6]
    path = plot_views(dataset.extras["views"], rendered["rgb"], rendered["depth"], os.path.join(plot_dir, f"views_step{step:06d}.png"),
                      depth_range=(module.near, module.far), title=f"held-out views at step {step}: ground truth, NeRF render, depth")
    latest = os.path.join(plot_dir, "views.png")
    shutil.copyfile(path, latest)
    return [path, latest]


NERF = Task("nerf", _nerf_loss, _nerf_eval_sums, _nerf_summarize, _nerf_report, plot=_nerf_plot)

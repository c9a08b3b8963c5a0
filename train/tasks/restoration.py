"""Image restoration (dehazing): MSE, PSNR of the restored and of the degraded input.

restoration: batch is {"inputs": degraded images, "targets": clean images} [B, H, W, C] in [0, 1]; the model maps inputs to restored images. Loss: MSE. "psnr" is the mean of per-image PSNRs of the restored image (clipped to [0, 1]); "input_psnr" is the same for the degraded input itself, the do-nothing baseline, measured on the same images.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from archlab.train import figures
from archlab.train.image_metrics import psnr
from archlab.train.tasks.base import Task
from archlab.train.tasks.classification import apply_classifier


def image_psnr(images, targets, max_value: float = 1.0):
    """Per-image PSNR in dB, [B], of ``images`` clipped to [0, max_value] against ``targets``."""
    error = jnp.clip(images, 0.0, max_value) - targets
    mse = jnp.mean(jnp.square(error).reshape(error.shape[0], -1), axis=-1)
    return psnr(mse, max_value)


def _restoration_loss(module, params, model_state, batch, rng, train: bool):
    restored, new_model_state = apply_classifier(module, params, model_state, batch["inputs"], rng, train)
    loss = jnp.mean(jnp.square(restored - batch["targets"]))
    return loss, ({"loss": loss, "psnr": jnp.mean(image_psnr(restored, batch["targets"]))}, new_model_state)


def _restoration_eval_sums(module, params, model_state, batch, weights):
    restored, _ = apply_classifier(module, params, model_state, batch["inputs"], None, False)
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

    inputs, targets = dataset.extras["plot_inputs"], dataset.extras["plot_targets"]
    restored = np.asarray(module.apply({"params": params, **model_state}, jnp.asarray(inputs), deterministic=True))
    path = figures.image_grid(np.concatenate([inputs, restored, targets]), os.path.join(plot_dir, f"restoration_step{step:06d}.png"),
                              columns=len(inputs), title=f"step {step}, rows: degraded input | restored | clean target")
    latest = os.path.join(plot_dir, "restoration.png")
    shutil.copyfile(path, latest)
    return [path, latest]


RESTORATION = Task("restoration", _restoration_loss, _restoration_eval_sums, _restoration_summarize, _restoration_report,
                   plot=_restoration_plot)

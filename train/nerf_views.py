"""A trained NeRF run's held-out views rendered whole, next to their ground truth, with PSNR per view.

The loop's evaluation reports PSNR over the held-out rays; this renders the same rays back into
images (for figures and per-view comparison) from a workdir's latest checkpoint, restored with the
trainer's own ``train.workdir.restore_params``. Rendering goes in fixed-size chunks of rays, so
one compile serves any image size and memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from archlab.arch import get_model_spec
from archlab.train.data import make_dataset
from archlab.train.image_metrics import psnr
from archlab.train.workdir import restore_params


@functools.partial(jax.jit, static_argnums=0)
def render_rays(module, params, model_state, rays: jax.Array) -> dict[str, jax.Array]:
    """One chunk of rays [N, 6] through a NeRF module, deterministic (compiled once per module and chunk size)."""
    return module.apply({"params": params, **model_state}, rays, deterministic=True)


def render_rays_in_chunks(module, params, model_state, rays: np.ndarray, chunk: int = 2048) -> dict[str, np.ndarray]:
    """Renders rays [..., 6] (origin, direction) with a NeRF module: ``{"rgb": [..., 3], "depth": [...]}``.

    The rays are cut into ``chunk``-row pieces (the last padded, its padding dropped), each rendered
    deterministically by one jitted ``module.apply``.
    """
    rays = np.asarray(rays, np.float32)
    flat = rays.reshape(-1, 6)
    padded = np.concatenate([flat, np.repeat(flat[:1], -len(flat) % chunk, axis=0)])
    model_state = dict(model_state or {})
    outputs = [render_rays(module, params, model_state, padded[i : i + chunk]) for i in range(0, len(padded), chunk)]
    rgb = np.concatenate([np.asarray(o["rgb"]) for o in outputs])[: len(flat)]
    depth = np.concatenate([np.asarray(o["depth"]) for o in outputs])[: len(flat)]
    return {"rgb": rgb.reshape(rays.shape[:-1] + (3,)), "depth": depth.reshape(rays.shape[:-1])}


def psnr_per_image(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image [N, ...] against its target, for values in [0, 1]: -10 log10(MSE)."""
    images, targets = np.asarray(images, np.float64), np.asarray(targets, np.float64)
    mse = np.mean(np.square(images - targets).reshape(len(images), -1), axis=-1)
    return psnr(mse)


@dataclasses.dataclass(frozen=True)
class HeldOutViews:
    """A run's held-out views: ground truth, render and depth [V, H, W(, 3)], PSNR per view [V]."""

    step: int
    truth: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray
    psnr: np.ndarray
    near: float
    far: float


def render_held_out_views(workdir: str, chunk: int = 2048, notify=print) -> HeldOutViews:
    """Restores ``workdir``'s latest checkpoint and renders every held-out view of its scene.

    The views are the ones the run evaluated on (its own data config, read from ``config.json``),
    so the mean of ``psnr`` equals the loop's ``psnr_view_mean`` at that step.
    Raises ``train.checkpoint.CheckpointError`` for a workdir without a run or a checkpoint.
    """
    config, params, model_state, step = restore_params(workdir, notify=notify)
    spec = get_model_spec(config.model_name)
    if spec.task != "nerf":
        raise ValueError(f"{workdir!r} holds a {config.model_name!r} run (task {spec.task!r}), not a NeRF")
    module = spec.make_module(config.model)
    extras = make_dataset(spec.task, config).extras
    rendered = render_rays_in_chunks(module, params, model_state, extras["rays"], chunk)
    return HeldOutViews(step=int(step), truth=extras["views"], rgb=rendered["rgb"], depth=rendered["depth"],
                        psnr=psnr_per_image(rendered["rgb"], extras["views"]), near=float(config.model.near), far=float(config.model.far))

"""train/nerf_views.py: chunked rendering equals one whole render, PSNR per image, and a trained run's
held-out views rendered back agree with the loop's own per-view PSNR."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from archlab.arch import get_model_spec
from archlab.train.checkpoint import CheckpointError
from archlab.train.data import nerf_scene as scene
from archlab.train.loop import train_and_evaluate
from archlab.train.nerf_views import psnr_per_image, render_held_out_views, render_rays_in_chunks

from conftest import tiny_config

TINY_NERF = dict(model__width=8, model__num_layers=2, model__pos_frequencies=2, model__dir_frequencies=1,
                 model__num_coarse=8, model__num_fine=8, data__image_size=8)


def test_chunked_render_equals_one_whole_render_and_keeps_the_image_shape():
    config = tiny_config("nerf", **TINY_NERF)
    module = get_model_spec("nerf").make_module(config.model)
    rays = scene.render_views(2, 0, 6).rays  # [2, 6, 6, 6]: 72 rays, not a multiple of the chunk
    params = jax.jit(lambda r: nn.meta.unbox(module.init(jax.random.PRNGKey(0), r)["params"]))(rays.reshape(-1, 6)[:4])
    chunked = render_rays_in_chunks(module, params, {}, rays, chunk=16)
    whole = module.apply({"params": params}, rays.reshape(-1, 6), deterministic=True)
    assert chunked["rgb"].shape == (2, 6, 6, 3) and chunked["depth"].shape == (2, 6, 6)
    np.testing.assert_allclose(chunked["rgb"].reshape(-1, 3), np.asarray(whole["rgb"]), atol=1e-5)
    np.testing.assert_allclose(chunked["depth"].reshape(-1), np.asarray(whole["depth"]), atol=1e-4)


def test_psnr_per_image_is_minus_ten_log10_of_each_images_mse():
    targets = np.zeros((3, 4, 4, 3))
    images = np.stack([np.full((4, 4, 3), 0.1), np.full((4, 4, 3), 0.01), np.zeros((4, 4, 3))])
    images[2, 0, 0, 0] = 1.0  # one wrong channel of 48: MSE 1/48
    np.testing.assert_allclose(psnr_per_image(images, targets), [20.0, 40.0, 10 * np.log10(48)], rtol=1e-9)


def test_held_out_views_of_a_trained_run_match_the_loops_per_view_psnr(tmp_path):
    config = tiny_config("nerf", **TINY_NERF, train__batch_size=64, train__steps=8, train__eval_every=8, train__eval_batches=0,
                         train__log_every=4, checkpoint__every=8)
    summary = train_and_evaluate(config, str(tmp_path), progress=False, echo=lambda *a: None)
    views = render_held_out_views(str(tmp_path), chunk=100, notify=lambda *a: None)
    count = scene.NUM_HELD_OUT_VIEWS
    assert views.step == 8 and views.truth.shape == views.rgb.shape == (count, 8, 8, 3) and views.depth.shape == (count, 8, 8)
    assert views.psnr.shape == (count,) and (views.near, views.far) == (config.model.near, config.model.far)
    np.testing.assert_allclose(views.truth, scene.render_views(count, scene.HELD_OUT_SEED, 8).images)
    assert abs(float(np.mean(views.psnr)) - summary["eval"]["psnr_view_mean"]) < 1e-3


def test_a_workdir_without_a_run_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        render_held_out_views(str(tmp_path / "missing"))

"""NeRF: the renderer on analytic fields, the model's shapes and gradients, the procedural scene,
and a short real training run through the loop."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archlab.arch import get_model_spec
from archlab.arch.nerf import positional_encoding, render_rays, sample_pdf
from archlab.train.data import DataError, EvalBatches, make_dataset, nerf_scene as scene
from archlab.train.loop import train_and_evaluate
from archlab.train.optim import make_optimizer
from archlab.train.state import init_train_state, param_count
from archlab.train.step import make_eval_step, make_train_step
from archlab.train.tasks import get_task

from conftest import REPO, cli_env, tiny_config

TINY_NERF = dict(model__width=8, model__num_layers=2, model__pos_frequencies=2, model__dir_frequencies=1,
                 model__num_coarse=8, model__num_fine=8, data__image_size=8)


def _tiny_module():
    config = tiny_config("nerf", **TINY_NERF)
    return config, get_model_spec("nerf").make_module(config.model)


def _init_params(module, rays):
    return jax.jit(lambda r: nn.meta.unbox(module.init(jax.random.PRNGKey(0), r)["params"]))(rays)  # eager init is slow


def _scene_rays(n: int, seed: int = 0):
    views = scene.render_views(2, seed, 16)
    rows = np.random.default_rng(seed).choice(2 * 16 * 16, n, replace=False)
    return jnp.asarray(views.rays.reshape(-1, 6)[rows]), jnp.asarray(views.images.reshape(-1, 3)[rows])


# --- the renderer, on fields whose image is known exactly

PLANE_Z, PLANE_COLOR = 0.1, np.array([0.2, 0.6, 0.9], np.float32)


def _opaque_plane(points, viewdirs):
    """Everything below z = PLANE_Z is opaque (density 1e4 per unit) and PLANE_COLOR; above it, empty."""
    sigma = jnp.where(points[..., 2] < PLANE_Z, 1e4, 0.0)
    return jnp.broadcast_to(jnp.asarray(PLANE_COLOR), points.shape), sigma


@pytest.mark.parametrize("jitter", [False, True])
def test_renderer_returns_the_known_colour_for_one_opaque_plane(jitter):
    # cameras 4 above the plane's origin side: straight down, oblique, and up (missing the plane)
    origins = np.array([[0, 0, 4], [0.5, -0.3, 4], [-1, 2, 4], [0, 0, 4]], np.float32)
    directions = np.array([[0, 0, -1], [0.3, -0.2, -1], [-0.5, 0.1, -1], [0.2, 0.1, 1]], np.float32)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    rays = jnp.asarray(np.concatenate([origins, directions], -1))
    near, far, num_coarse = 2.0, 6.0, 16
    render = jax.jit(lambda r, rng: render_rays(_opaque_plane, _opaque_plane, r, near=near, far=far, num_coarse=num_coarse,
                                                num_fine=32, background=0.25, rng=rng))
    out = render(rays, jax.random.PRNGKey(0) if jitter else None)
    hits = slice(0, 3)
    for key in ("rgb", "rgb_coarse"):
        np.testing.assert_allclose(out[key][hits], np.broadcast_to(PLANE_COLOR, (3, 3)), atol=1e-5)
        np.testing.assert_allclose(out[key][3], [0.25, 0.25, 0.25], atol=1e-6)  # the ray that misses sees the background
    np.testing.assert_allclose(out["acc"], [1, 1, 1, 0], atol=1e-5)
    # depth: the first sample past the plane; the fine pass resamples where the coarse weights are
    true_depth = (4.0 - PLANE_Z) / -directions[:3, 2]
    bin_width = (far - near) / num_coarse
    coarse_error = np.asarray(out["depth_coarse"][hits]) - true_depth
    fine_error = np.asarray(out["depth"][hits]) - true_depth
    assert np.all(coarse_error >= -1e-4) and np.all(coarse_error <= 1.5 * bin_width + 1e-4), coarse_error
    assert np.all(fine_error >= -1e-4) and np.all(fine_error <= coarse_error + 1e-4), (fine_error, coarse_error)
    assert np.all(fine_error < bin_width), fine_error
    np.testing.assert_allclose(out["depth"][3], far, atol=1e-4)


def test_renderer_of_a_half_transparent_slab_matches_beer_lambert():
    # a slab 0 < z < 1 of density s over a black floor at z < 0: colour c * (1 - exp(-s * path length))
    s, c = 0.7, jnp.array([1.0, 0.5, 0.0])

    def field(points, viewdirs):
        z = points[..., 2]
        sigma = jnp.where((z > 0) & (z < 1), s, jnp.where(z <= 0, 1e4, 0.0))
        rgb = jnp.where(((z > 0) & (z < 1))[..., None], c, 0.0)
        return jnp.broadcast_to(rgb, points.shape), sigma

    rays = jnp.array([[0.0, 0.0, 3.0, 0.0, 0.0, -1.0]])
    out = jax.jit(lambda r: render_rays(field, field, r, near=1.0, far=5.0, num_coarse=400, num_fine=16, background=1.0))(rays)
    np.testing.assert_allclose(out["rgb"][0], c * (1 - np.exp(-s * 1.0)), atol=5e-3)


def test_inverse_cdf_sampling_lands_in_the_weighted_bins():
    edges = jnp.linspace(2.0, 6.0, 9)  # 8 bins of 0.5
    weights = jnp.zeros((2, 8)).at[0, 3].set(1.0).at[1, 6].set(3.0).at[1, 1].set(1.0)
    for rng in (None, jax.random.PRNGKey(1)):
        t = np.asarray(sample_pdf(edges, weights, 400, rng))
        assert t.shape == (2, 400)
        assert np.mean((t[0] >= 3.5) & (t[0] <= 4.0)) > 0.99
        in_6, in_1 = np.mean((t[1] >= 5.0) & (t[1] <= 5.5)), np.mean((t[1] >= 2.5) & (t[1] <= 3.0))
        assert in_6 + in_1 > 0.99 and abs(in_6 - 0.75) < 0.06
    assert np.all(np.diff(np.asarray(sample_pdf(edges, weights, 50))) >= 0)  # deterministic quantiles come sorted


def test_positional_encoding_matches_the_direct_formula():
    x = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (64, 3)), jnp.float32)
    xs = np.asarray(x, np.float64)
    direct = np.concatenate([xs] + [np.sin(2.0**k * xs) for k in range(6)] + [np.cos(2.0**k * xs) for k in range(6)], -1)
    np.testing.assert_allclose(positional_encoding(x, 6), direct, atol=1e-5)
    assert positional_encoding(x, 0).shape == (64, 3)


# --- the model


def test_shape_and_parameter_count():
    _, module = _tiny_module()
    rays, _ = _scene_rays(5)
    params = _init_params(module, rays)
    apply = jax.jit(lambda p, r, rng: module.apply({"params": p}, r, deterministic=rng is None, rngs=None if rng is None else {"dropout": rng}))
    out = apply(params, rays, None)
    assert out["rgb"].shape == out["rgb_coarse"].shape == (5, 3) and out["depth"].shape == out["acc"].shape == (5,)
    assert set(params) == {"coarse", "fine"}
    pos, dirs, width = 3 * (1 + 2 * 2), 3 * (1 + 2 * 1), 8
    field = ((pos * width + width) + (width * width + width)  # trunk of 2 layers
             + (width + 1)  # sigma
             + (width * width + width)  # feature
             + ((width + dirs) * (width // 2) + width // 2)  # colour hidden
             + ((width // 2) * 3 + 3))  # rgb
    assert param_count(params) == 2 * field == 736
    # training jitters the samples with the dropout rng; evaluation is deterministic
    assert not np.allclose(apply(params, rays, jax.random.PRNGKey(1))["rgb"], out["rgb"])
    np.testing.assert_array_equal(apply(params, rays, None)["rgb"], out["rgb"])


def test_every_parameter_gets_a_finite_nonzero_gradient():
    _, module = _tiny_module()
    rays, rgb = _scene_rays(64)
    params = _init_params(module, rays)
    batch = {"rays": rays, "rgb": rgb}
    grads = jax.jit(jax.grad(lambda p: get_task("nerf").loss_fn(module, p, {}, batch, jax.random.PRNGKey(1), True)[0]))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_overfits_one_batch():
    config = tiny_config("nerf", **dict(TINY_NERF, model__width=32, model__pos_frequencies=4, model__num_coarse=16,
                                        model__num_fine=16), train__learning_rate="1e-2", train__warmup_steps="0", train__steps="300")
    module = get_model_spec("nerf").make_module(config.model)
    rays, rgb = _scene_rays(64)
    batch = {"rays": rays, "rgb": rgb}
    tx = make_optimizer(config.train)
    state = jax.jit(lambda rng: nn.meta.unbox(init_train_state(module, tx, rays[:1], rng)))(jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(module=module, task=get_task("nerf"), tx=tx))
    first = None
    for i in range(300):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first / 20, (first, float(metrics["loss"]))  # measured: 0.249 -> 0.0058, 43x


def test_evaluation_sums_do_not_depend_on_batch_padding():
    config, module = _tiny_module()
    dataset = make_dataset("nerf", config)
    params = _init_params(module, jnp.asarray(dataset.example_input))
    eval_step = jax.jit(make_eval_step(module=module, task=get_task("nerf")))
    arrays = {k: np.concatenate([b[k][w > 0] for b, w in dataset.eval_batches]) for k in dataset.eval_batches[0][0]}
    results = []
    for batch_size in (96, 512):  # 512 rays = one batch, 96 = six batches, the last padded
        sums = None
        for batch, weights in EvalBatches.of_arrays(arrays, batch_size):
            out = eval_step(params, {}, batch, weights)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        results.append(get_task("nerf").summarize(jax.device_get(sums)))
    for key in ("loss", "psnr", "psnr_coarse", "psnr_view_mean"):
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-5)


# --- the procedural scene


def test_ray_cast_hits_shapes_exactly_and_misses_to_the_background():
    sphere = scene.Sphere((0.0, 0.0, 0.0), 0.5, (1.0, 0.0, 0.0))
    box = scene.Box((1.0, -0.2, -0.2), (1.4, 0.2, 0.2), (0.0, 1.0, 0.0))
    rays = np.array([
        [0, 0, 3, 0, 0, -1],  # onto the sphere's top: depth 2.5, normal +z
        [1.2, 0, 3, 0, 0, -1],  # onto the box's top: depth 2.8, normal +z
        [3, 0, 0, -1, 0, 0],  # along -x: the box's +x face first (depth 1.6), not the sphere behind it
        [0, 0, 3, 0, 0, 1],  # away from everything
    ], np.float32)
    color, depth = scene.ray_cast(rays, (sphere, box), background=0.5)
    np.testing.assert_allclose(depth[:3], [2.5, 2.8, 1.6], atol=1e-5)
    assert np.isinf(depth[3])
    top = scene.AMBIENT + (1 - scene.AMBIENT) * scene.LIGHT[2]
    side = scene.AMBIENT + (1 - scene.AMBIENT) * max(scene.LIGHT[0], 0.0)
    np.testing.assert_allclose(color, [[top, 0, 0], [0, top, 0], [0, side, 0], [0.5, 0.5, 0.5]], atol=1e-6)


def test_cameras_look_at_the_origin_and_the_dataset_is_deterministic():
    poses = scene.look_at_poses(4, seed=3)
    rays = scene.camera_rays(poses, 9)
    center = rays[:, 4, 4]  # the middle pixel of an odd-sized image looks straight at the origin
    np.testing.assert_allclose(np.linalg.norm(center[:, :3], axis=-1), scene.CAMERA_RADIUS, rtol=1e-6)
    np.testing.assert_allclose(center[:, 3:], -center[:, :3] / scene.CAMERA_RADIUS, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rays[..., 3:], axis=-1), 1.0, atol=1e-6)

    config = tiny_config("nerf", **TINY_NERF)
    a, b = make_dataset("nerf", config), make_dataset("nerf", config)
    np.testing.assert_array_equal(a.train.batch_at(3)["rays"], b.train.batch_at(3)["rays"])
    np.testing.assert_array_equal(a.extras["views"], b.extras["views"])
    assert a.extras["views"].shape == (scene.NUM_HELD_OUT_VIEWS, 8, 8, 3) and a.held_out_name == "held-out views"
    rays_per_epoch = scene.NUM_TRAIN_VIEWS * 8 * 8
    epoch = np.concatenate([a.train.batch_at(i)["rays"] for i in range(rays_per_epoch // config.train.batch_size)])
    train_origins = np.unique(epoch[:, :3], axis=0)
    held_out_origins = np.unique(a.extras["rays"][..., :3].reshape(-1, 3), axis=0)
    assert len(train_origins) == scene.NUM_TRAIN_VIEWS and not set(map(tuple, train_origins)) & set(map(tuple, held_out_origins))
    assert 0.1 < np.mean(a.extras["views"] < 1.0) < 0.9  # both shapes and background are in view


def test_the_scene_lies_between_the_default_near_and_far():
    model = tiny_config("nerf").model
    views = scene.render_views(scene.NUM_TRAIN_VIEWS, scene.TRAIN_SEED, 32)
    hit = views.depths[np.isfinite(views.depths)]
    assert model.near + 0.1 < hit.min() and hit.max() < model.far - 0.1, (hit.min(), hit.max())
    assert model.background == scene.BACKGROUND


def test_a_data_path_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="nerf trains on the procedural scene only"):
        make_dataset("nerf", tiny_config("nerf", data__path="/tmp/x"))
    proc = subprocess.run([sys.executable, "-m", "launch.train", "--model=nerf", f"--workdir={tmp_path / 'run'}",
                           "--config.data.path=/tmp/x"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "procedural scene only" in lines[0], proc.stderr


# --- a short real run through the loop


def test_short_run_logs_psnr_and_plots_views(tmp_path):
    config = tiny_config("nerf", **TINY_NERF, train__batch_size=64, train__steps=12, train__eval_every=6, train__eval_batches=0,
                         train__log_every=6, checkpoint__every=12)
    summary = train_and_evaluate(config, str(tmp_path), progress=False, echo=lambda *a: None)
    assert np.isfinite(summary["eval"]["psnr"]) and "psnr_view_mean" in summary["eval"]
    plots = os.listdir(tmp_path / "plots")
    assert {"loss.png", "views.png", "views_step000006.png", "views_step000012.png"} <= set(plots), plots
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any(r["split"] == "train" and "psnr" in r for r in records) and any(r["split"] == "eval" and "psnr" in r for r in records)

"""Inception and residual blocks, the dehaze layer's hand-derived gradient, the inception and
dehaze families, procedural haze and the restoration task."""

import os
import subprocess
import sys
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archlab.arch import get_model_spec
from archlab.arch.layers import ConvUnit, InceptionBlock, ResidualBlock, dehaze, dehaze_reference, scatter
from archlab.train.data import make_dataset
from archlab.train.data.images import apply_haze, haze_parameters, hazy_stream, load_images, synthesize_haze
from archlab.train.loop import train_and_evaluate
from archlab.train.optim import make_optimizer
from archlab.train.state import init_train_state, param_count
from archlab.train.step import make_train_step
from archlab.train.tasks import get_task

from conftest import REPO, cli_env, tiny_config

T_MIN = 0.05


# ------------------------------------------------------------------ dehaze: the custom gradient


def _dehaze_numpy(hazy, t, a, t_min=T_MIN):
    return (hazy - a * (1.0 - t)) / np.maximum(t, t_min)


def _haze_point(rng, t_values):
    """I [2, 3, 3, 1], t [2, 3, 3, 1] (given values), A [2, 1, 1, 1] (broadcast per image), float64."""
    hazy = rng.uniform(0.2, 0.9, (2, 3, 3, 1))
    t = np.asarray(t_values, np.float64).reshape(2, 3, 3, 1)
    a = rng.uniform(0.6, 1.0, (2, 1, 1, 1))
    return hazy, t, a


def _central_differences(f, args, index, eps):
    """d sum(f(*args)) / d args[index], element by element, by central differences (float64)."""
    grad = np.zeros_like(args[index])
    for i in np.ndindex(args[index].shape):
        plus, minus = [a.copy() for a in args], [a.copy() for a in args]
        plus[index][i] += eps
        minus[index][i] -= eps
        grad[i] = (f(*plus).sum() - f(*minus).sum()) / (2 * eps)
    return grad


@pytest.mark.parametrize("where", ["above the clamp", "below the clamp", "at the clamp"])
def test_dehaze_custom_gradient_matches_central_finite_differences(where):
    rng = np.random.default_rng(0)
    t_values = {
        "above the clamp": rng.uniform(0.1, 1.0, 18),
        "below the clamp": rng.uniform(0.0, 0.04, 18),
        "at the clamp": np.full(18, T_MIN),  # the custom rule averages the one-sided slopes, as central differences do
    }[where]
    hazy, t, a = _haze_point(rng, t_values)
    weights = rng.normal(size=(2, 3, 3, 1))  # a random cotangent, so every element's gradient counts
    loss = lambda hazy, t, a: weights * _dehaze_numpy(hazy, t, a)
    with jax.enable_x64(True):
        grads = jax.grad(lambda *args: jnp.sum(weights * dehaze(*args, T_MIN)), argnums=(0, 1, 2))(
            *(jnp.asarray(v, jnp.float64) for v in (hazy, t, a)))
        assert all(g.dtype == jnp.float64 for g in grads)
        for index, name in enumerate(("hazy I", "transmission t", "airlight A")):
            # at the kink the one-sided curvature makes the error O(eps), not O(eps**2): smaller step there
            eps, tol = (1e-8, 1e-5) if where == "at the clamp" else (1e-6, 1e-6)
            expected = _central_differences(loss, [hazy, t, a], index, eps=eps)
            assert grads[index].shape == (hazy, t, a)[index].shape, name
            np.testing.assert_allclose(np.asarray(grads[index]), expected, rtol=tol, atol=tol, err_msg=name)
    if where == "at the clamp":  # and the averaged slope is far from either one-sided slope
        one_sided = a / T_MIN, (a - _dehaze_numpy(hazy, t, a)) / T_MIN
        assert all(np.abs(weights * s - np.asarray(grads[1])).max() > 1.0 for s in one_sided)


def test_dehaze_custom_gradient_equals_autodiff_of_the_plain_formula():
    rng = np.random.default_rng(1)
    hazy = jnp.asarray(rng.uniform(0.2, 0.9, (4, 5, 5, 3)), jnp.float32)
    # away from the clamp on both sides, and exactly at it (where jnp.maximum's tie rule also averages)
    t = (rng.choice([0.02, 0.2, 0.5, 0.9], (4, 5, 5, 1)) + rng.uniform(0, 0.01, (4, 5, 5, 1))).astype(np.float32)
    t[:, 0] = T_MIN
    t = jnp.asarray(t)
    a = jnp.asarray(rng.uniform(0.6, 1.0, (4, 1, 1, 3)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(4, 5, 5, 3)), jnp.float32)
    for fn_name, fn in (("custom", dehaze), ("reference", dehaze_reference)):
        assert fn(hazy, t, a, T_MIN).shape == (4, 5, 5, 3), fn_name
    np.testing.assert_array_equal(dehaze(hazy, t, a, T_MIN), dehaze_reference(hazy, t, a, T_MIN))
    custom = jax.grad(lambda *v: jnp.sum(weights * dehaze(*v, T_MIN)), argnums=(0, 1, 2))(hazy, t, a)
    plain = jax.grad(lambda *v: jnp.sum(weights * dehaze_reference(*v, T_MIN)), argnums=(0, 1, 2))(hazy, t, a)
    for name, c, p in zip(("hazy", "transmission", "airlight"), custom, plain):
        assert c.shape == p.shape and c.dtype == p.dtype, name
        np.testing.assert_allclose(c, p, rtol=2e-5, atol=2e-5, err_msg=name)
    # the same under jit and vmap (one image at a time, A broadcast inside each)
    per_image = jax.jit(jax.vmap(jax.grad(lambda h, t1, a1, w1: jnp.sum(w1 * dehaze(h, t1, a1, T_MIN)), argnums=1)))
    np.testing.assert_allclose(per_image(hazy, t, a, weights), custom[1], rtol=1e-5, atol=1e-5)


def test_dehaze_gradient_stays_finite_where_autodiff_overflows():
    # float16: autodiff's quotient rule forms d**-2, which overflows for d < 2**-8 (here d = 0.003),
    # while the true derivative (about -2e4 / 1e4 scale) is representable; t = 0 is safe too.
    hazy = jnp.asarray([0.5, 0.6, 0.5], jnp.float16)
    t = jnp.asarray([0.003, 0.02, 0.0], jnp.float16)
    a = jnp.asarray([0.7, 0.55, 0.7], jnp.float16)
    t_min = 0.001
    grad_t = lambda fn: jax.grad(lambda t: jnp.sum(fn(hazy, t, a, t_min)))(t)
    custom, plain = grad_t(dehaze), grad_t(dehaze_reference)
    assert not np.isfinite(np.asarray(plain, np.float32)[0])
    assert np.all(np.isfinite(np.asarray(custom, np.float32)))
    with jax.enable_x64(True):
        exact = jax.grad(lambda t: jnp.sum(dehaze_reference(jnp.asarray(hazy, jnp.float64), t, jnp.asarray(a, jnp.float64), t_min)))(
            jnp.asarray(t, jnp.float64))
    np.testing.assert_allclose(np.asarray(custom, np.float64), np.asarray(exact), rtol=2e-2)
    # a jnp.where clamp would give NaN at t = 0 (the untaken branch's 0 * inf); the custom rule does not
    where_clamp = lambda t: jnp.sum(jnp.where(t > 0.05, (0.5 - 0.7 * (1 - t)) / t, (0.5 - 0.7 * (1 - t)) / 0.05))
    assert np.isnan(jax.grad(where_clamp)(jnp.zeros(1))[0])
    assert np.isfinite(jax.grad(lambda t: jnp.sum(dehaze(0.5, t, 0.7, 0.05)))(jnp.zeros(1))[0])


def test_dehaze_inverts_the_scattering_model():
    rng = np.random.default_rng(2)
    clean = jnp.asarray(rng.random((3, 6, 6, 1)), jnp.float32)
    t = jnp.asarray(rng.uniform(0.1, 1.0, (3, 6, 6, 1)), jnp.float32)
    a = jnp.asarray(rng.uniform(0.6, 1.0, (3, 1, 1, 1)), jnp.float32)
    np.testing.assert_allclose(dehaze(scatter(clean, t, a), t, a, T_MIN), clean, atol=1e-5)


# ----------------------------------------------------------------------------------- blocks


def test_inception_block_shapes_channels_and_branch_order():
    x = jnp.asarray(np.random.default_rng(0).random((2, 8, 8, 5)), jnp.float32)
    for factorize in (True, False):
        block = InceptionBlock(3, 2, 4, 1, 2, 6, factorize_5x5=factorize)
        variables = block.init(jax.random.PRNGKey(0), x)
        y = block.apply(variables, x)
        assert y.shape == (2, 8, 8, 3 + 4 + 2 + 6) == (2, 8, 8, block.out_features)
        params = nn.meta.unbox(variables["params"])
        assert ("b5x5_a" in params) == factorize and ("b5x5" in params) == (not factorize)
        assert params["b5x5_a" if factorize else "b5x5"]["conv"]["kernel"].shape[:2] == ((3, 3) if factorize else (5, 5))
        # channels are concatenated in branch order: the first 3 are the 1x1 branch on its own
        first = ConvUnit(3, 1).apply({"params": params["b1x1"]}, x)
        np.testing.assert_allclose(y[..., :3], first, atol=1e-6)
        last = ConvUnit(6, 1).apply({"params": params["pool_proj"]}, nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME"))
        np.testing.assert_allclose(y[..., -6:], last, atol=1e-6)


class _Affine(nn.Module):
    features: int
    zero: bool = False

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.zero else nn.initializers.lecun_normal()
        return nn.Dense(self.features, kernel_init=init, name="dense")(x)


def test_residual_block_is_x_plus_f_and_projects_when_shapes_differ():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    block = ResidualBlock(partial(_Affine, 6))
    variables = block.init(jax.random.PRNGKey(0), x)
    body = _Affine(6).apply({"params": variables["params"]["body"]}, x)
    np.testing.assert_allclose(block.apply(variables, x), x + body, atol=1e-6)
    assert set(variables["params"]) == {"body"}  # same shape: identity shortcut, no projection

    zero = ResidualBlock(partial(_Affine, 6, zero=True))  # f zero-initialised: the block is the identity
    np.testing.assert_array_equal(zero.apply(zero.init(jax.random.PRNGKey(0), x), x), x)
    rezero = ResidualBlock(partial(_Affine, 6), rezero=True)  # ReZero gate starts at 0: identity, whatever f is
    v = rezero.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(rezero.apply(v, x), x)
    assert float(v["params"]["gate"]) == 0.0

    wider = ResidualBlock(partial(_Affine, 9), activation=nn.relu)
    v = nn.meta.unbox(wider.init(jax.random.PRNGKey(0), x))
    assert wider.apply(v, x).shape == (4, 9) and v["params"]["proj"]["kernel"].shape == (6, 9)
    assert float(jnp.min(wider.apply(v, x))) >= 0.0

    images = jnp.ones((2, 8, 8, 3))
    conv_strided = lambda **kw: nn.Conv(5, (3, 3), strides=(2, 2), padding="SAME", **kw)
    strided = ResidualBlock(conv_strided)
    v = nn.meta.unbox(strided.init(jax.random.PRNGKey(0), images))
    assert strided.apply(v, images).shape == (2, 4, 4, 5)
    assert v["params"]["proj"]["kernel"].shape == (1, 1, 3, 5)  # 1x1 conv, stride 2


# -------------------------------------------------------------------------- the two families

def _unit(k, cin, cout):  # conv without bias + BatchNorm scale and bias
    return k * k * cin * cout + 2 * cout


def _inception_count():
    stem = _unit(3, 1, 4)
    # stage 1 (4 -> 2+2+2+1 = 7 channels): 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | pool -> 1x1, plus a 1x1 projection with bias
    stage1 = _unit(1, 4, 2) + _unit(1, 4, 2) + _unit(3, 2, 2) + _unit(1, 4, 1) + _unit(3, 1, 2) + _unit(3, 2, 2) + _unit(1, 4, 1) + (4 * 7 + 7)
    # stage 2 (widths doubled, 7 -> 4+4+4+2 = 14 channels)
    stage2 = _unit(1, 7, 4) + _unit(1, 7, 4) + _unit(3, 4, 4) + _unit(1, 7, 2) + _unit(3, 2, 4) + _unit(3, 4, 4) + _unit(1, 7, 2) + (7 * 14 + 14)
    head = 14 * 10 + 10
    return stem + stage1 + stage2 + head


def _dehaze_count():
    conv = lambda cin, cout: 9 * cin * cout + cout  # 3x3 with bias
    stem = conv(1, 4)
    blocks = 2 * (conv(4, 4) + conv(4, 4))  # two residual blocks of two convs, identity shortcuts
    transmission = conv(4, 1)
    airlight = (2 * 4 + 2 * 1) * 8 + 8 + 8 * 1 + 1  # [mean, max of features; mean, max of the image] -> 8 -> C
    return stem + blocks + transmission + airlight


FAMILIES = {
    # name: (overrides, input shape, output shape, parameter count worked out by hand)
    "inception": (
        {"model__stem_features": "4", "model__branch_widths": "2,2,2,1,2,1", "model__stages": "1,1", "data__image_size": "16"},
        (16, 16, 1), (10,), _inception_count(),
    ),
    "dehaze": (
        {"model__width": "4", "model__dilations": "1,2", "model__airlight_hidden": "8", "data__image_size": "16"},
        (16, 16, 1), (16, 16, 1), _dehaze_count(),
    ),
}


def _family(name, **extra):
    overrides, shape, _, count = FAMILIES[name]
    config = tiny_config(name, **overrides, **extra)
    spec = get_model_spec(name)
    return config, spec.make_module(config.model), get_task(spec.task), shape, count


def _batch(name, shape, n):
    rng = np.random.default_rng(0)
    if name == "dehaze":
        clean = rng.random((n,) + shape).astype(np.float32) ** 3
        hazy, _, _ = synthesize_haze(clean, seed=0)
        return {"inputs": jnp.asarray(hazy), "targets": jnp.asarray(clean)}
    return {"inputs": jnp.asarray(rng.random((n,) + shape), jnp.float32), "labels": jnp.arange(n) % 10}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_shape_and_parameter_count(name):
    _, module, _, shape, count = _family(name)
    x = _batch(name, shape, 4)["inputs"]
    variables = nn.meta.unbox(module.init(jax.random.PRNGKey(0), x))
    assert module.apply(variables, x).shape == (4,) + FAMILIES[name][2]
    assert param_count(variables["params"]) == count == {"inception": 971, "dehaze": 766}[name]
    assert set(variables) == ({"params", "batch_stats"} if name == "inception" else {"params"})


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    _, module, task, shape, _ = _family(name)
    batch = _batch(name, shape, 4)
    variables = dict(nn.meta.unbox(module.init(jax.random.PRNGKey(0), batch["inputs"])))
    params = variables.pop("params")
    grads = jax.grad(lambda p: task.loss_fn(module, p, variables, batch, jax.random.PRNGKey(1), True)[0])(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name, factor", [("inception", 10.0), ("dehaze", 10.0)])
def test_overfits_one_batch(name, factor):
    _, _, _, shape, _ = _family(name)
    extra = {"model__dropout_rate": "0"} if name == "inception" else {}
    config, module, task, _, _ = _family(name, train__learning_rate="1e-2", train__warmup_steps="0", train__weight_decay="0",
                                         train__steps="150", **extra)
    tx = make_optimizer(config.train)
    batch = _batch(name, shape, 16)
    state = nn.meta.unbox(init_train_state(module, tx, batch["inputs"][:1], jax.random.PRNGKey(0)))
    step = jax.jit(make_train_step(module=module, task=task, tx=tx))
    first = None
    for i in range(150):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first / factor, (first, float(metrics["loss"]))
    if name == "inception":
        assert float(metrics["accuracy"]) == 1.0


# ------------------------------------------------------------------------ procedural haze


def test_haze_synthesis_is_in_range_matches_the_formula_and_is_deterministic():
    clean = load_images("", 16, 0.2).x_test
    hazy, t, a = synthesize_haze(clean, seed=3)
    assert hazy.shape == clean.shape and t.shape == clean.shape[:3] + (1,) and a.shape == (len(clean), 1, 1, 1)
    assert hazy.dtype == np.float32
    assert hazy.min() >= 0.0 and hazy.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(hazy, clean * t + a * (1 - t), atol=1e-6)
    assert np.exp(-2.0) - 1e-6 <= t.min() and t.max() <= 1.0 and 0.6 <= a.min() and a.max() <= 1.0
    assert t.min() > 0.05  # always above the default model.t_min: the restoration is well posed
    again, t2, _ = synthesize_haze(clean, seed=3)
    np.testing.assert_array_equal(hazy, again)
    assert not np.array_equal(synthesize_haze(clean, seed=4)[0], hazy)
    # transmission is smooth: neighbouring pixels differ far less than the map's range
    assert np.abs(np.diff(t, axis=1)).max() < 0.25 * (t.max() - t.min())
    t3, a3 = haze_parameters(np.random.default_rng(0), 5, 8, 8, 3)  # colour images: A per channel, grey +-5 %
    assert a3.shape == (5, 1, 1, 3) and np.all(np.abs(a3 / a3.mean(-1, keepdims=True) - 1) < 0.1)
    assert apply_haze(np.ones((5, 8, 8, 3), np.float32), t3, a3).max() <= 1.0


def test_hazy_iterator_is_deterministic_resumable_and_shards_one_global_batch():
    clean = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
    it = hazy_stream(clean, 8, seed=1)
    batches = [next(it) for _ in range(7)]  # crosses an epoch boundary (5 batches per epoch)
    again = hazy_stream(clean, 8, seed=1)
    again.set_state(it.get_state() | {"position": 5, "grain": ""})
    resumed = next(again)
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(resumed[key], batches[5][key])
    # the same image gets new haze in another epoch
    assert not np.array_equal(batches[0]["inputs"], batches[5]["inputs"])
    halves = [hazy_stream(clean, 8, seed=1, shard=s, num_shards=2).batch_at(3) for s in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["inputs"] for h in halves]), batches[3]["inputs"])


def test_restoration_dataset_and_metrics(tmp_path):
    config = tiny_config("dehaze", **FAMILIES["dehaze"][0])
    data = make_dataset("restoration", config)
    batch, weights = data.eval_batches[0]
    assert set(batch) == {"inputs", "targets"} and batch["inputs"].shape == (8, 16, 16, 1)
    assert data.held_out_name == "test" and len(data.extras["plot_inputs"]) == 8
    # the fixed test haze does not move with the seed
    other = make_dataset("restoration", tiny_config("dehaze", seed=5, **FAMILIES["dehaze"][0]))
    np.testing.assert_array_equal(other.eval_batches[0][0]["inputs"], batch["inputs"])

    class Identity(nn.Module):  # the do-nothing restorer scores exactly the input's own PSNR
        @nn.compact
        def __call__(self, x, *, deterministic=True):
            return x

    task = get_task("restoration")
    w = np.ones(8, np.float32)
    w[6:] = 0.0  # padding rows do not count
    sums = task.eval_sums(Identity(), {}, {}, jax.tree.map(jnp.asarray, batch), jnp.asarray(w))
    metrics = task.summarize(jax.device_get(sums))
    mse = ((batch["inputs"][:6] - batch["targets"][:6]) ** 2).mean(axis=(1, 2, 3))
    assert metrics["psnr"] == pytest.approx(metrics["input_psnr"]) == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-5)
    assert metrics["loss"] == pytest.approx(mse.mean(), rel=1e-5)
    assert "dB" in task.report(metrics)


def test_dehaze_trains_end_to_end_and_plots(tmp_path):
    config = tiny_config("dehaze", **FAMILIES["dehaze"][0], train__steps="20", train__learning_rate="3e-3", train__eval_every="10",
                         checkpoint__every="20", parallel__mesh="data:2")
    summary = train_and_evaluate(config, str(tmp_path), progress=False, echo=lambda *a: None)
    assert set(summary["eval"]) == {"loss", "psnr", "input_psnr"} and np.isfinite(summary["eval"]["psnr"])
    plots = sorted(os.listdir(tmp_path / "plots"))
    assert {"restoration.png", "restoration_step000010.png", "restoration_step000020.png", "loss.png"} <= set(plots)


def test_bad_data_path_for_dehaze_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launch.train", "--model=dehaze", f"--workdir={tmp_path / 'w'}",
                           "--config.data.path=/nonexistent"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "'/nonexistent' does not exist" in lines[0], proc.stderr

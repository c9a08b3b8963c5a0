"""int8 fake quantisation (arch/quant.py), QAT on the normal training path, PTQ (train/ptq.py)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli, tiny_config

CNN_TINY = dict(model__channels="4,8", model__dense=16, data__image_size=8, train__batch_size=16, train__steps=6,
                train__log_every=3, train__eval_every=3, checkpoint__every=3)


def test_fake_quant_round_trip_is_within_half_a_step():
    from archlab.arch.quant import fake_quant

    x = jax.random.uniform(jax.random.PRNGKey(0), (4096,), minval=-3.0, maxval=3.0)
    scale = jnp.float32(3.0 / 127)
    y = fake_quant(x, scale)
    assert float(jnp.max(jnp.abs(y - x))) <= float(scale) / 2 + 1e-6
    codes = np.asarray(y / scale)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the int8 grid
    assert np.abs(codes).max() <= 127


def test_per_channel_weight_codes_round_trip_within_half_a_step():
    from archlab.arch.quant import quantize_weights

    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 5)) * jnp.array([0.01, 0.1, 1.0, 10.0, 100.0])
    codes, scales = quantize_weights(kernel)
    assert codes.dtype == jnp.int8 and scales.shape == (5,)
    np.testing.assert_allclose(scales, np.abs(np.asarray(kernel)).max(axis=(0, 1, 2)) / 127, rtol=1e-6)
    error = np.abs(np.asarray(codes, np.float32) * np.asarray(scales) - np.asarray(kernel)).max(axis=(0, 1, 2))
    assert np.all(error <= np.asarray(scales) / 2 * (1 + 1e-5)), (error, scales)  # each channel to its own step


def test_straight_through_gradient_is_identity_inside_the_clip_range_and_zero_outside():
    from archlab.arch.quant import fake_quant

    scale = jnp.float32(0.01)  # clip range [-1.27, 1.27]
    x = jnp.array([-2.0, -1.26, -0.3, 0.0, 0.004, 0.77, 1.26, 1.5, 9.0])
    cotangent = jnp.arange(1.0, 10.0)
    grad = jax.grad(lambda v: jnp.sum(fake_quant(v, scale) * cotangent))(x)
    inside = np.abs(np.asarray(x)) <= 1.27
    np.testing.assert_array_equal(np.asarray(grad), np.where(inside, np.asarray(cotangent), 0.0))


def test_int8_matmul_sums_integer_codes_exactly_and_equals_the_fake_quantised_matmul():
    from archlab.arch.quant import QuantDotGeneral, fake_quant, quantize_to_codes, weight_scale

    x = jax.random.normal(jax.random.PRNGKey(2), (6, 40)) * 2.0
    w = jax.random.normal(jax.random.PRNGKey(3), (40, 7)) * jnp.linspace(0.1, 3.0, 7)
    codes = np.asarray(quantize_to_codes(x, jnp.float32(0.05)))
    np.testing.assert_array_equal(codes, np.round(codes))  # exact integers, clipped to the int8 range
    assert np.abs(codes).max() == 127
    dn = (((1,), (0,)), ((), ()))
    layer = QuantDotGeneral()
    variables = layer.init(jax.random.PRNGKey(0), x, w, dn)
    _, observed = layer.apply(variables, x, w, dn, mutable=["quant"])  # one observation sets amax
    variables = {**variables, **observed}
    y = layer.apply(variables, x, w, dn)
    amax = float(variables["quant"]["input"]["amax"])
    x_codes = np.asarray(quantize_to_codes(x, jnp.float32(amax / 127)), np.int64)
    w_codes = np.asarray(quantize_to_codes(w, weight_scale(w)), np.int64)
    exact = (x_codes @ w_codes) * (np.float32(amax / 127) * np.asarray(weight_scale(w)).reshape(-1))
    np.testing.assert_allclose(y, exact, rtol=1e-6, atol=1e-6)  # integer sums exact, one float rescale
    fake = fake_quant(x, jnp.float32(amax / 127)) @ fake_quant(w, weight_scale(w))
    np.testing.assert_allclose(y, fake, rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda v: jnp.sum(layer.apply(variables, v, w, dn) ** 2))(x)
    fake_grad = jax.grad(lambda v: jnp.sum((fake_quant(v, jnp.float32(amax / 127)) @ fake_quant(w, weight_scale(w))) ** 2))(x)
    np.testing.assert_allclose(grad, fake_grad, rtol=1e-4, atol=1e-4)  # the same straight-through gradient


@pytest.mark.parametrize("kwargs", [dict(kernel_size=(3, 3), padding="SAME"), dict(kernel_size=(3, 3), strides=(2, 2), use_bias=False),
                                    dict(kernel_size=(1, 1), strides=2, padding="VALID"), dict(kernel_size=(3, 3), feature_group_count=2),
                                    dict(kernel_size=(2, 2), padding=((1, 0), (0, 1)), kernel_dilation=2), None])
def test_int8_layers_are_flax_layers_with_the_quant_hooks(kwargs):
    """Int8Conv / Int8Dense (written out so exporters trace them) equal nn.Conv / nn.Dense with the
    hooks: same params, same ``quant`` collection paths, same outputs."""
    import functools

    import flax.linen as nn

    from archlab.arch.quant import Int8Conv, Int8Dense, QuantConvGeneralDilated, QuantDotGeneral

    if kwargs is None:
        ours, hooked, x = Int8Dense(6), nn.Dense(6, dot_general_cls=QuantDotGeneral), jnp.ones((3, 5))
    else:
        ours = Int8Conv(8, **kwargs)
        hooked = functools.partial(nn.Conv, conv_general_dilated_cls=QuantConvGeneralDilated)(8, **kwargs)
        x = jnp.ones((2, 9, 9, 4))
    x = x * jnp.linspace(-2.0, 3.0, x.shape[-1])
    variables = hooked.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(ours.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(variables)
    _, updated = hooked.apply(variables, x, mutable=["quant"])
    _, updated_ours = ours.apply(variables, x, mutable=["quant"])
    jax.tree.map(np.testing.assert_array_equal, updated_ours, updated)
    variables = {**variables, **updated}
    np.testing.assert_allclose(ours.apply(variables, x), hooked.apply(variables, x), rtol=1e-6, atol=1e-6)


def _tiny_cnn(quant):
    from archlab.arch import build_module

    return build_module("cnn", channels=(4, 8), dense=16, quant=quant, dropout_rate=0.0)


def test_int8_model_has_the_float_params_and_a_quant_collection():
    x = jnp.ones((2, 8, 8, 1))
    f32 = _tiny_cnn("none").init(jax.random.PRNGKey(0), x)
    q = _tiny_cnn("int8").init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(f32["params"]) == jax.tree.structure(q["params"])
    amax = jax.tree_util.tree_leaves_with_path(q["quant"])
    assert len([p for p, _ in amax if "amax" in jax.tree_util.keystr(p)]) == 4  # 2 convs, dense, head


def test_ptq_calibration_sets_activation_scales_from_the_data():
    from archlab.train.ptq import calibrate, fresh_quant_state

    module = _tiny_cnn("int8")
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, hi, (4, 8, 8, 1)).astype(np.float32) for hi in (0.5, 1.0, 3.0)]
    params = module.init(jax.random.PRNGKey(0), batches[0])["params"]
    before = fresh_quant_state(module, jnp.asarray(batches[0]))
    state = calibrate(module, params, {"quant": before}, batches)
    first = state["quant"]["conv_0"]["QuantConvGeneralDilated_0"]["input"]
    assert int(first["count"]) == 3
    np.testing.assert_allclose(float(first["amax"]), np.mean([np.abs(b).max() for b in batches]), rtol=1e-6)
    later = state["quant"]["head"]["QuantDotGeneral_0"]["input"]
    assert float(later["amax"]) > 0 and int(later["count"]) == 3
    # Evaluation reads the ranges and does not move them; the output is on the int8 grid of the ranges.
    logits, mutated = module.apply({"params": params, **state}, batches[0], mutable=[])
    assert not mutated and logits.shape == (4, 10)
    # Calibrating again from scratch gives the same ranges (it resets, it does not accumulate).
    again = calibrate(module, params, state, batches)
    np.testing.assert_allclose(float(again["quant"]["conv_0"]["QuantConvGeneralDilated_0"]["input"]["amax"]), float(first["amax"]))


def test_model_size_counts_int8_kernels_plus_float_scales():
    from archlab.train.ptq import model_size_bytes

    params = {"dense": {"kernel": np.zeros((10, 6), np.float32), "bias": np.zeros((6,), np.float32)},
              "bn": {"scale": np.zeros((6,), np.float32)}}
    quant_state = {"dense": {"input": {"amax": np.float32(1), "count": np.int32(1)}}}
    size = model_size_bytes(params, quant_state)
    assert size["float32_bytes"] == 4 * (60 + 6 + 6)
    assert size["int8_bytes"] == 60 + 4 * 6 + 4 * 6 + 4 * 6 + 4  # codes, per-channel scales, bias, bn, one activation scale


def test_qat_trains_on_the_normal_path_and_ptq_cli_quantizes_a_float_run(tmp_path):
    from archlab.train.loop import train_and_evaluate
    from archlab.train.workdir import restore_params

    qat = train_and_evaluate(tiny_config("cnn", model__quant="int8", **CNN_TINY), str(tmp_path / "qat"), progress=False, echo=lambda *a: None)
    assert qat["step"] == 6 and np.isfinite(qat["eval"]["loss"])
    _, _, model_state, _ = restore_params(str(tmp_path / "qat"), notify=lambda *a: None)
    assert int(model_state["quant"]["conv_0"]["QuantConvGeneralDilated_0"]["input"]["count"]) == 6  # one EMA update per step, checkpointed

    train_and_evaluate(tiny_config("cnn", **CNN_TINY), str(tmp_path / "f32"), progress=False, echo=lambda *a: None)
    proc = run_cli("launch.quantize", f"--workdir={tmp_path / 'f32'}", "--calibration_batches=2", f"--out={tmp_path / 'int8'}")
    assert proc.returncode == 0, proc.stderr
    assert "int8 PTQ: accuracy" in proc.stdout and "smaller" in proc.stdout
    import json

    report = json.load(open(tmp_path / "int8" / "ptq.json"))
    assert report["calibration_batches"] == 2 and report["size"]["int8_bytes"] < report["size"]["float32_bytes"] / 3
    assert abs(report["int8_ptq"]["accuracy"] - report["float32"]["accuracy"]) < 0.2
    config, _, q_state, step = restore_params(str(tmp_path / "int8"), notify=lambda *a: None)
    assert config.model.quant == "int8" and step == 6 and int(q_state["quant"]["head"]["QuantDotGeneral_0"]["input"]["count"]) == 2

    again = run_cli("launch.quantize", f"--workdir={tmp_path / 'f32'}", f"--out={tmp_path / 'int8'}")
    assert_one_line_error(again, "already holds checkpoints")  # never overwrites an int8 run
    from archlab.train.ptq import QuantizeError, quantize_run

    with pytest.raises(QuantizeError, match="already an int8 model"):
        quantize_run(str(tmp_path / "qat"), calibration_batches=1)
    with pytest.raises(QuantizeError, match="calibration_batches must be >= 1"):
        quantize_run(str(tmp_path / "f32"), calibration_batches=0)


def test_bad_quant_inputs_get_one_line():
    from archlab.train.checkpoint import CheckpointError
    from archlab.train.config import ConfigError
    from archlab.train.ptq import quantize_run

    with pytest.raises(ConfigError, match="model.quant must be one of none, int8"):
        tiny_config("cnn", model__quant="int4")
    with pytest.raises(CheckpointError, match="does not exist"):
        quantize_run("/nonexistent/run", calibration_batches=4)
    assert_one_line_error(run_cli("launch.train", "--model=resnet18", "--config.model.quant=fp8"), "model.quant", "none, int8")
    assert_one_line_error(run_cli("launch.quantize", "--workdir=/nonexistent/run"), "does not exist")


def test_int8_conv_refuses_what_it_does_not_quantise_in_one_line():
    """Non-zero padding is a clear ValueError naming the valid paddings, not a silent float conv."""
    import jax
    import jax.numpy as jnp

    from archlab.arch.quant import Int8Conv

    with pytest.raises(ValueError, match="zero padding only .*'SAME', 'VALID'.*CIRCULAR"):
        Int8Conv(4, (3, 3), padding="CIRCULAR").init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1)))

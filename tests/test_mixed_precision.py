"""Mixed precision: bf16/f16 compute with f32 params, dynamic loss scaling for float16 (train/optim/loss_scale.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_one_line_error, run_cli, tiny_config

CNN_TINY = dict(model__channels="4,8", model__dense=16, model__dropout_rate=0.0, data__image_size=8, train__batch_size=16,
                train__warmup_steps=1, parallel__mesh="data:1")
BF16_LOSS_TOLERANCE = 0.02  # |loss_bf16 - loss_f32| per step on the tiny CNN (bf16 keeps ~3 significant digits)


def _steps(config, tx=None, count=4):
    """Losses of ``count`` train steps of ``config`` on the same batches, plus the final state."""
    from archlab.arch import get_model_spec
    from archlab.train.data import make_dataset
    from archlab.train.optim import make_optimizer
    from archlab.train.state import init_train_state
    from archlab.train.step import make_train_step
    from archlab.train.tasks import get_task

    spec = get_model_spec(config.model_name)
    module = spec.make_module(config.model)
    data = make_dataset(spec.task, config)
    tx = tx or make_optimizer(config.train)
    state = jax.tree.map(lambda x: x, __import__("flax").linen.meta.unbox(
        init_train_state(module, tx, jnp.asarray(data.example_input), jax.random.PRNGKey(0))))
    step = jax.jit(make_train_step(module=module, task=get_task(spec.task), tx=tx))
    history = []
    for i in range(count):
        state, metrics = step(state, data.train.batch_at(i), jax.random.PRNGKey(i))
        history.append(jax.device_get(metrics))
    return history, state


def test_bf16_step_matches_f32_within_tolerance_and_keeps_f32_params():
    f32, _ = _steps(tiny_config("cnn", **CNN_TINY))
    bf16, state = _steps(tiny_config("cnn", model__dtype="bfloat16", **CNN_TINY))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))  # param_dtype stays float32
    diffs = [abs(float(a["loss"]) - float(b["loss"])) for a, b in zip(f32, bf16)]
    assert max(diffs) < BF16_LOSS_TOLERANCE, diffs
    assert float(bf16[-1]["loss"]) < float(bf16[0]["loss"])  # it trains


def test_bf16_really_computes_in_bf16():
    from archlab.arch import build_module

    module = build_module("cnn", channels=(4,), dense=8, dtype="bfloat16")
    x = jnp.ones((1, 8, 8, 1))
    variables = module.init(jax.random.PRNGKey(0), x)
    jaxpr = str(jax.make_jaxpr(lambda v: module.apply(v, x))(variables))
    assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_n_good_steps():
    from archlab.train.optim.loss_scale import LossScaleState, dynamic_loss_scale

    tx = dynamic_loss_scale(optax.adam(0.1), initial_scale=1024.0, growth_interval=3)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    good = {"w": jnp.ones(3)}
    bad = {"w": jnp.array([1.0, jnp.inf, 1.0])}

    updates, after_bad = tx.update(bad, state, params)
    assert float(after_bad.scale) == 512.0 and int(after_bad.good_steps) == 0
    np.testing.assert_array_equal(updates["w"], 0.0)  # the overflowed step is skipped
    jax.tree.map(np.testing.assert_array_equal, after_bad.inner, state.inner)  # Adam moments untouched

    s = after_bad
    for expected in (512.0, 512.0, 1024.0, 1024.0):
        updates, s = tx.update(good, s, params)
        assert float(s.scale) == expected
        assert np.all(np.asarray(updates["w"]) != 0)
    assert int(s.good_steps) == 1 and isinstance(s, LossScaleState)

    low = dynamic_loss_scale(optax.sgd(0.1), initial_scale=1.0)  # never below min_scale (1)
    _, s = low.update(bad, low.init(params), params)
    assert float(s.scale) == 1.0


def test_float16_step_skips_overflow_halves_the_scale_and_then_trains():
    from archlab.train.optim.loss_scale import dynamic_loss_scale

    config = tiny_config("cnn", model__dtype="float16", **CNN_TINY)
    assert config.train.loss_scaling == "dynamic"  # auto -> dynamic for float16
    inner = optax.sgd(0.05)
    # 2**40 * dloss overflows float16 (max 65504) on the way back: the first steps must be skipped.
    history, state = _steps(config, dynamic_loss_scale(inner, initial_scale=2.0**40), count=30)
    overflows = [float(m["overflow"]) for m in history]
    scales = [float(m["loss_scale"]) for m in history]
    assert overflows[0] == 1.0 and overflows[-1] == 0.0, overflows
    assert scales[1] == scales[0] / 2  # halved after the overflow
    assert int(state.nonfinite_step) == -1  # an overflow is not a training failure
    assert all(np.isfinite(float(m["loss"])) for m in history)
    first_good = overflows.index(0.0)
    assert float(history[-1]["loss"]) < float(history[first_good]["loss"])


def test_loss_scale_lives_in_the_checkpoint(tmp_path):
    from archlab.train.checkpoint import Checkpointer
    from archlab.train.compiled_run import Run
    from archlab.train.loop import train_and_evaluate

    config = tiny_config("cnn", model__dtype="float16", train__steps=4, train__log_every=2, train__eval_every=2,
                         checkpoint__every=2, **CNN_TINY)
    summary = train_and_evaluate(config, str(tmp_path / "run"), progress=False, echo=lambda *a: None)
    assert np.isfinite(summary["eval"]["loss"])
    checkpointer = Checkpointer(str(tmp_path / "run" / "checkpoints"), keep=2)
    state, _, step = checkpointer.restore_latest(Run(config).abstract_state)
    checkpointer.close()
    assert step == 4 and float(state.opt_state.scale) == 2.0**15 and int(state.opt_state.good_steps) == 4


def test_bad_precision_inputs_get_one_line():
    from archlab.train.config import ConfigError

    with pytest.raises(ConfigError, match="model.dtype must be one of float32, bfloat16, float16"):
        tiny_config("cnn", model__dtype="float8")
    with pytest.raises(ConfigError, match="train.loss_scaling must be auto, dynamic or none"):
        tiny_config("cnn", train__loss_scaling="static")
    assert tiny_config("cnn", model__dtype="bfloat16").train.loss_scaling == "none"
    assert_one_line_error(run_cli("launch.train", "--model=cnn", "--config.model.dtype=fp16"), "model.dtype", "float32, bfloat16, float16")

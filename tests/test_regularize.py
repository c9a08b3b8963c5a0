"""Regularisation and early stopping: L1/L2 penalties, in-step augmentation, early stopping
(the pure rule on scripted sequences, and in the loop with the best checkpoint kept), bad inputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archlab.train import augment, early_stopping, regularize
from archlab.train.config import ConfigError, apply_overrides, get_config

from conftest import assert_one_line_error, run_cli, tiny_config

# --- L1 / L2


def test_penalty_equals_a_hand_computation():
    params = {
        "dense": {"kernel": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "bias": jnp.array([10.0, -10.0])},
        "conv": {"kernel": jnp.full((1, 1, 1, 3), -3.0), "bias": jnp.array([7.0])},
        "norm": {"scale": jnp.array([4.0])},
    }
    l2_hand = 0.01 * (1 + 4 + 0.25 + 0 + 3 * 9)  # kernels only: biases and norm scales are free
    l1_hand = 0.1 * (1 + 2 + 0.5 + 0 + 3 * 3)
    assert float(regularize.weight_penalty(params, l2=0.01)) == pytest.approx(l2_hand)
    assert float(regularize.weight_penalty(params, l1=0.1)) == pytest.approx(l1_hand)
    assert float(regularize.weight_penalty(params, l1=0.1, l2=0.01)) == pytest.approx(l1_hand + l2_hand)
    assert regularize.from_config(get_config("mlp").train) is None  # off by default


def test_train_step_adds_the_penalty_to_the_gradient_but_reports_the_data_loss():
    import flax.linen as nn
    import optax

    from archlab.arch import build_module
    from archlab.train.state import init_train_state
    from archlab.train.step import make_train_step
    from archlab.train.tasks import CLASSIFICATION

    module, tx = build_module("mlp", hidden=(8,), num_classes=3, dropout_rate=0.0), optax.sgd(0.1)
    batch = {"inputs": jax.random.normal(jax.random.PRNGKey(0), (4, 5)), "labels": jnp.array([0, 1, 2, 1])}
    state = nn.meta.unbox(init_train_state(module, tx, batch["inputs"], jax.random.PRNGKey(1)))
    penalty_fn = lambda p: regularize.weight_penalty(p, l2=0.5)
    with_penalty = make_train_step(module=module, task=CLASSIFICATION, tx=tx, regularizer=penalty_fn)
    plain = make_train_step(module=module, task=CLASSIFICATION, tx=tx)
    data_loss = lambda p: CLASSIFICATION.loss_fn(module, p, {}, batch, None, False)[0]

    @jax.jit
    def both(state):
        rng = jax.random.PRNGKey(3)
        return with_penalty(state, batch, rng), plain(state, batch, rng), jax.grad(lambda p: data_loss(p) + penalty_fn(p))(state.params)

    (new, metrics), (new_plain, metrics_plain), grads = both(state)
    assert float(metrics["penalty"]) == pytest.approx(float(penalty_fn(state.params)), rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(metrics_plain["loss"]), rel=1e-6)  # the data loss alone
    for p, p_new, g in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params), jax.tree.leaves(grads)):
        np.testing.assert_allclose(p_new, p - 0.1 * g, rtol=1e-5, atol=1e-6)  # sgd on data loss + penalty
    kernel = state.params["dense_0"]["kernel"]  # the penalty's part of the kernel update: 0.1 * 2 * l2 * w
    np.testing.assert_allclose(new_plain.params["dense_0"]["kernel"] - new.params["dense_0"]["kernel"], 0.1 * kernel, rtol=1e-4, atol=1e-6)


# --- augmentation


def _images():
    return jax.random.uniform(jax.random.PRNGKey(0), (16, 8, 8, 3))


@pytest.mark.parametrize("mode", ["shift", "flip", "shift_flip"])
def test_augmentation_is_deterministic_in_the_rng_and_keeps_shapes_and_labels(mode):
    batch = {"inputs": _images(), "labels": jnp.arange(16)}
    fn = augment.from_config(tiny_config("cnn", train__augment=mode).train)
    jitted = jax.jit(fn)
    a = jitted(batch, jax.random.PRNGKey(1))
    b = jitted(batch, jax.random.PRNGKey(1))
    c = jitted(batch, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(a["inputs"], c["inputs"])
    assert a["inputs"].shape == batch["inputs"].shape and a["inputs"].dtype == batch["inputs"].dtype
    np.testing.assert_array_equal(a["labels"], batch["labels"])


def test_shift_moves_each_image_by_at_most_pad_pixels_zero_filled():
    image = jnp.zeros((64, 8, 8, 1)).at[:, 4, 3, 0].set(1.0)  # one lit pixel at (4, 3)
    shifted = jax.jit(augment.random_shift, static_argnames="pad")(image, jax.random.PRNGKey(5), pad=2)
    offsets = set()
    for out in np.asarray(shifted[..., 0]):
        (r,), (c,) = np.nonzero(out)
        assert out.sum() == 1.0 and abs(r - 4) <= 2 and abs(c - 3) <= 2
        offsets.add((r - 4, c - 3))
    assert len(offsets) > 10  # per-example offsets, not one shift for the batch


def test_flip_mirrors_left_right():
    images = _images()
    flipped = augment.random_flip(images, jax.random.PRNGKey(4))
    for x, y in zip(np.asarray(images), np.asarray(flipped)):
        assert np.array_equal(x, y) or np.array_equal(x[:, ::-1], y)
    assert not np.array_equal(images, flipped)


# --- early stopping: the pure rule


def _stop_index(values, metric="accuracy", patience=3, min_delta=0.0):
    rule = early_stopping.EarlyStopping(metric, early_stopping.resolve_mode(metric, "auto"), patience, min_delta)
    state = early_stopping.StoppingState()
    for i, v in enumerate(values):
        state, _ = early_stopping.update(rule, state, v, step=100 * (i + 1))
        if state.stopped:
            return i, state
    return None, state


def test_early_stopping_stops_at_the_right_evaluation():
    index, state = _stop_index([0.50, 0.70, 0.80, 0.79, 0.80, 0.81, 0.78, 0.80, 0.81, 0.99])
    assert index == 8 and state.best == 0.81 and state.best_step == 600 and state.bad_evals == 3
    # a loss is minimised; equal is not better
    index, state = _stop_index([3.0, 2.0, 2.0, 1.5, 1.6, 1.5], metric="loss", patience=2)
    assert index == 5 and state.best == 1.5 and state.best_step == 400
    # min_delta: gains below it are not improvements
    index, _ = _stop_index([0.5, 0.505, 0.509, 0.6], min_delta=0.01, patience=2)
    assert index == 2
    assert _stop_index([0.1, 0.2, 0.3, 0.4], patience=1)[0] is None
    assert early_stopping.StoppingState.from_json(state.to_json()) == state


def test_early_stopping_in_the_loop_keeps_the_best_checkpoint_and_stays_stopped(tmp_path, monkeypatch):
    from archlab.train.compiled_run import Run
    from archlab.train.loop import train_and_evaluate
    from archlab.train.workdir import restore_params

    scripted = {0: 0.1, 2: 0.5, 4: 0.8, 6: 0.7, 8: 0.8, 10: 0.6, 12: 0.9}  # step -> accuracy; stops after step 8

    def fake_evaluate(self, state, batches):
        return {"accuracy": scripted[int(np.asarray(state.step))], "loss": 1.0}

    monkeypatch.setattr(Run, "evaluate", fake_evaluate)
    config = tiny_config("mlp", model__hidden="8", train__steps=14, train__eval_every=2, train__early_stopping_metric="accuracy",
                         train__patience=2, checkpoint__every=100, parallel__mesh="data:1")
    messages = []
    summary = train_and_evaluate(config, str(tmp_path), progress=False, echo=messages.append)
    assert summary["step"] == 8 and not summary.get("interrupted")
    assert summary["early_stopping"]["best_step"] == 4 and summary["early_stopping"]["best"] == 0.8
    assert any("early stopping: accuracy did not improve for 2 evaluation(s)" in m and "stopped at step 8" in m for m in messages)
    # the best state is a workdir of its own; the stopped one is the latest checkpoint
    assert restore_params(str(tmp_path / "best"), notify=lambda m: None)[3] == 4
    assert restore_params(str(tmp_path), notify=lambda m: None)[3] == 8
    evals = [r["step"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if r["split"] == "eval"]
    assert evals == [2, 4, 6, 8]
    # the same command again does not train on
    messages = []
    again = train_and_evaluate(config, str(tmp_path), progress=False, echo=messages.append)
    assert again["step"] == 8 and any("already stopped early at step 8" in m for m in messages)


def test_a_finished_run_whose_final_evaluation_was_its_best_runs_again_cleanly(tmp_path, monkeypatch):
    """The final evaluation's improvement is saved as the best after the last checkpoint, so the same
    command again re-evaluates that step: it must find the same best step already there, not fail."""
    from archlab.train.compiled_run import Run
    from archlab.train.loop import train_and_evaluate
    from archlab.train.workdir import restore_params

    monkeypatch.setattr(Run, "evaluate", lambda self, state, batches: {"accuracy": int(np.asarray(state.step)) / 10, "loss": 1.0})
    config = tiny_config("mlp", model__hidden="8", train__steps=6, train__eval_every=2, train__early_stopping_metric="accuracy",
                         train__patience=2, checkpoint__every=2, parallel__mesh="data:1")
    for _ in range(3):
        summary = train_and_evaluate(config, str(tmp_path), progress=False, echo=lambda m: None)
        assert summary["step"] == 6 and summary["early_stopping"]["best_step"] == 6, summary
    assert restore_params(str(tmp_path / "best"), notify=lambda m: None)[3] == 6


def test_a_validation_split_chooses_the_state_and_the_test_split_scores_it_once(tmp_path, monkeypatch):
    from archlab.train.compiled_run import Run
    from archlab.train.loop import train_and_evaluate

    scripted = {2: 0.5, 4: 0.8, 6: 0.7, 8: 0.8}  # validation accuracy by step; stops after step 8, best at 4

    def fake_evaluate(self, state, batches):  # tells the splits apart by their size
        rows, step = int(sum(np.asarray(weights).sum() for _, weights in batches)), int(np.asarray(state.step))
        if rows == 100:
            return {"accuracy": scripted[step], "loss": 1.0}
        return {"accuracy": float(rows), "loss": float(step)}

    monkeypatch.setattr(Run, "evaluate", fake_evaluate)
    common = dict(model__hidden="8", train__eval_every=2, train__eval_batches="0", checkpoint__every=100, parallel__mesh="data:1",
                  data__validation_examples="100")
    config = tiny_config("mlp", **common, train__steps=14, train__early_stopping_metric="accuracy", train__patience=2)
    messages = []
    summary = train_and_evaluate(config, str(tmp_path / "stopped"), progress=False, echo=messages.append)
    assert summary["step"] == 8 and summary["early_stopping"]["best_step"] == 4
    # the 359 test images, scored once, on the best state (step 4) restored from WORKDIR/best
    assert summary["test"] == {"accuracy": 359.0, "loss": 4.0, "step": 4, "state": "best state"}
    assert any(m.startswith("validation at step 8: ") for m in messages)
    assert any(m.startswith("test at step 4 (best state): accuracy 35900.00 %") for m in messages)
    records = [json.loads(line) for line in open(tmp_path / "stopped" / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "test"] == [4]
    assert all(r["accuracy"] in scripted.values() for r in records if r["split"] == "eval")
    # without early stopping the test split scores the last state
    summary = train_and_evaluate(tiny_config("mlp", **common, train__steps=6), str(tmp_path / "plain"), progress=False, echo=lambda m: None)
    assert summary["test"] == {"accuracy": 359.0, "loss": 6.0, "step": 6, "state": "last state"}
    assert summary["eval"]["accuracy"] == 0.7


# --- bad inputs


@pytest.mark.parametrize("overrides, fragment", [
    ({"train.augment": "rotate"}, "train.augment must be one of none, shift, flip, shift_flip"),
    ({"train.augment_pad": "0"}, "train.augment_pad must be >= 1"),
    ({"train.l2": "-1"}, "train.l1 and train.l2 must be >= 0"),
    ({"train.early_stopping_metric": "accuracy", "train.patience": "0"}, "train.patience must be >= 1"),
    ({"train.early_stopping_mode": "up"}, "train.early_stopping_mode must be one of auto, min, max"),
])
def test_bad_regularisation_config_is_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_config("cnn"), overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_augment_on_a_language_model_is_refused_before_training():
    from archlab.train.compiled_run import Run

    with pytest.raises(ConfigError, match="train.augment=shift needs image classification inputs"):
        Run(tiny_config("transformer", train__augment="shift"))


def test_cli_unknown_early_stopping_metric_is_one_line(tmp_path):
    proc = run_cli("launch.train", "--model=mlp", f"--workdir={tmp_path}", "--config.model.hidden=8", "--config.train.steps=2",
                   "--config.train.early_stopping_metric=acc", "--no_progress")
    assert_one_line_error(proc, "train.early_stopping_metric='acc' is not an eval metric", "valid: accuracy, loss")
    assert not os.path.exists(tmp_path / "checkpoints")  # refused before any work

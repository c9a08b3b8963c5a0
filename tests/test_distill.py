"""Knowledge distillation (train.teacher): the loss, the frozen teacher inside the step, bad teachers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archlab.train.config import ConfigError
from archlab.train.distill import Teacher, TeacherError, distillation_loss, distillation_task, load_teacher
from archlab.train.loop import train_and_evaluate
from archlab.train.tasks import CLASSIFICATION
from archlab.train.workdir import restore_params

from conftest import assert_one_line_error, run_cli, tiny_config

SMALL_CNN = dict(model__channels="4,8", model__dense="16", data__image_size="0", train__warmup_steps="1")
quiet = dict(progress=False, echo=lambda *a: None)


def _numpy_distillation_loss(zs, zt, y, alpha, t):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_ps = log_softmax(zs / t)
    pt = np.exp(log_softmax(zt / t))
    hard = -np.mean(log_ps[np.arange(len(y)), y])  # CE(y, softmax(z_s / T))
    soft = -np.mean(np.sum(pt * log_ps, -1))  # CE(softmax(z_t / T), softmax(z_s / T))
    return alpha * hard + (1 - alpha) * t * t * soft


@pytest.mark.parametrize("alpha,t", [(0.5, 4.0), (0.0, 2.0), (1.0, 1.0), (0.3, 0.5)])
def test_distillation_loss_equals_hand_computation(alpha, t):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(2, 16, 10)) * 3
    y = rng.integers(0, 10, 16)
    loss, parts = distillation_loss(jnp.asarray(zs), jnp.asarray(zt), jnp.asarray(y), alpha=alpha, temperature=t)
    np.testing.assert_allclose(float(loss), _numpy_distillation_loss(zs, zt, y, alpha, t), rtol=1e-5)
    np.testing.assert_allclose(float(alpha * parts["hard_loss"] + (1 - alpha) * t * t * parts["soft_loss"]), float(loss), rtol=1e-6)


def test_soft_term_gradient_vanishes_when_student_matches_teacher():
    z = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)))
    grad = jax.grad(lambda zs: distillation_loss(zs, z, jnp.zeros(4, jnp.int32), alpha=0.0, temperature=3.0)[0])(z)
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)


def test_teacher_logits_enter_the_train_step():
    """The step's loss is the hand-computed one with the (frozen, eval-mode) teacher's logits on the same batch."""
    import flax.linen as nn
    import optax

    from archlab.arch import get_model_spec
    from archlab.train.state import init_train_state
    from archlab.train.step import make_train_step

    module = get_model_spec("cnn").make_module(tiny_config("cnn", **SMALL_CNN).model)
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.random((8, 8, 8, 1)).astype(np.float32), "labels": rng.integers(0, 10, 8).astype(np.int32)}
    tx = optax.sgd(0.1)
    state = nn.meta.unbox(init_train_state(module, tx, batch["inputs"][:1], jax.random.PRNGKey(0)))
    teacher = Teacher(module, nn.meta.unbox(module.init(jax.random.PRNGKey(1), batch["inputs"][:1])), "cnn", "(in memory)", 0)
    task = distillation_task(CLASSIFICATION, teacher, alpha=0.25, temperature=2.0)
    step = jax.jit(make_train_step(module=module, task=task, tx=tx))
    new_state, metrics = step(state, batch, jax.random.PRNGKey(3))
    zs = np.asarray(module.apply({"params": state.params}, batch["inputs"], deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)}))
    zt = np.asarray(module.apply(teacher.variables, batch["inputs"], deterministic=True))
    expected = _numpy_distillation_loss(zs, zt, batch["labels"], 0.25, 2.0)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-4)
    assert abs(expected - _numpy_distillation_loss(zs, zs, batch["labels"], 0.25, 2.0)) > 1e-2  # zt matters to that figure
    assert float(metrics["teacher_accuracy"]) == pytest.approx(np.mean(zt.argmax(-1) == batch["labels"]))
    assert not np.array_equal(np.asarray(new_state.params["head"]["kernel"]), np.asarray(state.params["head"]["kernel"]))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train_and_evaluate(tiny_config("cnn", **SMALL_CNN, train__steps=6, checkpoint__every=6), workdir, **quiet)
    return workdir


def test_distilled_run_leaves_teacher_unchanged(teacher_dir, tmp_path):
    _, before, _, step = restore_params(teacher_dir, notify=lambda *a: None)
    config = tiny_config("mlp", model__hidden="16", data__image_size="0", train__steps="4", train__log_every="2",
                         train__teacher=teacher_dir, train__distill_alpha="0.3", train__distill_temperature="3.0")
    summary = train_and_evaluate(config, str(tmp_path / "student"), **quiet)
    assert summary["step"] == 4
    _, after, _, step_after = restore_params(teacher_dir, notify=lambda *a: None)
    assert step_after == step
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), before, after)
    rows = [json.loads(line) for line in open(tmp_path / "student" / "metrics.jsonl")]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows and all({"soft_loss", "hard_loss", "teacher_accuracy", "ce"} <= set(r) for r in train_rows)


def _fake_run(path, model: str, **overrides) -> str:
    """A workdir with a config.json and a non-empty checkpoints/ (checks that run before restoring)."""
    config = tiny_config(model, **overrides)
    os.makedirs(os.path.join(path, "checkpoints", "1"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"config": config.to_dict(), "example_input": {"shape": [1, 8, 8, 1], "dtype": "float32"}}, f)
    return str(path)


def test_bad_teachers_are_named(tmp_path):
    student = tiny_config("cnn", **SMALL_CNN)
    example = np.zeros((1, 8, 8, 1), np.float32)

    def problem(teacher_dir, config=student, example=example):
        config = tiny_config("cnn", **SMALL_CNN, train__teacher=teacher_dir) if config is student else config
        with pytest.raises(TeacherError) as e:
            load_teacher(config, example, "classification")
        return str(e.value)

    assert "does not exist" in problem(str(tmp_path / "missing"))
    assert "task lm" in problem(_fake_run(tmp_path / "lm", "transformer"))
    five = _fake_run(tmp_path / "five_classes", "cnn", **SMALL_CNN, model__num_classes="5")
    assert "5 classes" in problem(five) and "this student has 10" in problem(five)
    subset = _fake_run(tmp_path / "subset", "cnn", **SMALL_CNN, data__classes="0-4", model__num_classes="10")
    assert "data.classes='0-4'" in problem(subset)
    assert "takes inputs of shape (8, 8, 1)" in problem(_fake_run(tmp_path / "ok", "cnn", **SMALL_CNN), example=np.zeros((1, 16, 16, 1)))
    empty = tmp_path / "empty"
    _fake_run(empty, "cnn", **SMALL_CNN)
    os.rmdir(empty / "checkpoints" / "1")
    assert "no checkpoint" in problem(str(empty))
    lm_student = tiny_config("transformer", train__teacher=str(tmp_path / "ok"))
    with pytest.raises(TeacherError, match="classification student"):
        load_teacher(lm_student, np.zeros((1, 32), np.int32), "lm")


def test_bad_distillation_settings_rejected():
    with pytest.raises(ConfigError, match="distill_alpha must be in"):
        tiny_config("cnn", train__distill_alpha="1.5")
    with pytest.raises(ConfigError, match="distill_temperature must be > 0"):
        tiny_config("cnn", train__distill_temperature="0")


def test_cli_missing_teacher_is_one_line(tmp_path):
    proc = run_cli("launch.train", "--model=cnn", f"--workdir={tmp_path / 'run'}", f"--config.train.teacher={tmp_path / 'nowhere'}")
    assert_one_line_error(proc, "train.teacher", "does not exist")
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_cli_language_model_teacher_is_one_line(tmp_path):
    lm = _fake_run(tmp_path / "lm", "transformer")
    proc = run_cli("launch.train", "--model=cnn", f"--workdir={tmp_path / 'run'}", f"--config.train.teacher={lm}")
    assert_one_line_error(proc, "train.teacher", "transformer run (task lm)", "classification teacher")

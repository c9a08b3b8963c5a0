"""train.optimizer / train.schedule (train/optim/optimizers.py), the parameter EMA and top-p sampling."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archlab.train.optim import learning_rate_schedule, make_optimizer
from archlab.train.optim.optimizers import OPTIMIZERS, SCHEDULES, ema_update

from conftest import assert_one_line_error, run_cli, tiny_cli_flags, tiny_config


def _train_config(**overrides):
    values = dict(steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    values.update({k: str(v) for k, v in overrides.items()})
    return tiny_config("mlp", **{f"train__{k}": v for k, v in values.items()}).train


def _toy_loss(params):
    # a small least-squares fit: kernels (decayed) and biases (not)
    x = jnp.linspace(-1, 1, 24).reshape(8, 3)
    y = jnp.stack([x @ jnp.array([1.0, -2.0, 0.5]), x[:, 0] * 3], axis=-1)
    pred = {g: x @ p["kernel"] + p["bias"] for g, p in params.items()}
    return sum(jnp.mean((pred[g] - y) ** 2) for g in pred)


def _fit(t, param_groups=(), steps=15):
    # not zeros: adafactor's steps are relative to the params' scale
    params = {g: {"kernel": jnp.full((3, 2), 0.3), "bias": jnp.full((2,), 0.1)} for g in param_groups or ("net",)}
    tx = make_optimizer(t, param_groups)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(_toy_loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    first = float(_toy_loss(params))
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return first, float(_toy_loss(params))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_reduces_the_loss_alone_and_in_param_groups(optimizer):
    t = _train_config(optimizer=optimizer, learning_rate=0.05, warmup_steps=2, steps=15)
    first, last = _fit(t)
    assert last < 0.7 * first, (optimizer, first, last)
    grouped = _train_config(optimizer=optimizer, learning_rate=0.05, warmup_steps=2, steps=15)
    first, last = _fit(grouped, param_groups=("generator", "discriminator"))
    assert last < 0.7 * first, (optimizer, first, last)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_reduces_the_loss(schedule):
    first, last = _fit(_train_config(schedule=schedule, learning_rate=0.05, warmup_steps=2, steps=15))
    assert last < 0.7 * first, (schedule, first, last)


def test_schedule_shapes():
    # warmup 10 to peak 1; end at step 100 (min_lr_ratio 0.1); the decay's midpoint is step 55
    expected = {
        "cosine": {5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1},
        "linear": {5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1},
        "constant": {5: 0.5, 10: 1.0, 55: 1.0, 100: 1.0},
        "rsqrt": {5: 0.5, 10: 1.0, 40: 0.5, 100: np.sqrt(0.1)},
    }
    for name, points in expected.items():
        lr = learning_rate_schedule(_train_config(schedule=name))
        for step, value in points.items():
            assert float(lr(step)) == pytest.approx(value, rel=1e-5), (name, step)
    assert float(learning_rate_schedule(_train_config(schedule="rsqrt", warmup_steps=0))(4)) == pytest.approx(0.5)


def test_adamw_cosine_is_optax_adamw_with_warmup_cosine():
    t = _train_config(learning_rate=0.01, weight_decay=0.1, grad_clip=1.0)
    reference = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 0.01, 10, 100, 0.001), b1=t.b1, b2=t.b2, weight_decay=0.1,
                    mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
    )
    params = {"net": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    ours, theirs = make_optimizer(t), reference
    s1, s2, p1, p2 = ours.init(params), theirs.init(params), params, params
    for _ in range(12):
        u1, s1 = ours.update(jax.grad(_toy_loss)(p1), s1, p1)
        u2, s2 = theirs.update(jax.grad(_toy_loss)(p2), s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p1, p2)


def test_ema_update_matches_the_closed_form():
    decay, trajectory = 0.8, [jnp.full((2,), float(k * k)) for k in range(7)]
    ema = trajectory[0]
    for p in trajectory[1:]:
        ema = ema_update(ema, p, decay)
    n = len(trajectory) - 1
    closed = decay**n * trajectory[0] + (1 - decay) * sum(decay ** (n - k) * trajectory[k] for k in range(1, n + 1))
    np.testing.assert_allclose(np.asarray(ema), np.asarray(closed), rtol=1e-6)


def test_train_step_keeps_the_ema_and_evaluation_reads_it():
    from archlab.train.compiled_run import Run

    decay = 0.7
    run = Run(tiny_config(train__ema_decay=decay, train__steps=5))
    state = run.init_state(0)
    step = run.compile_train_step()
    expected = jax.tree.map(np.asarray, state.params)
    for i in range(5):
        state, _ = step(state, run.place_batch(run.train_iterator().batch_at(i)))
        expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), expected, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6), state.ema_params, expected)
    batches = run.eval_batches()
    with_ema = run.evaluate(state, batches)
    raw = run.evaluate(state.replace(ema_params=None), batches)
    ema_as_params = run.evaluate(state.replace(params=state.ema_params, ema_params=None), batches)
    assert with_ema == ema_as_params and with_ema["loss"] != raw["loss"]


def test_ema_survives_resume_and_restore_params_returns_it(tmp_path):
    from archlab.train.checkpoint import Checkpointer
    from archlab.train.compiled_run import Run
    from archlab.train.loop import train_and_evaluate
    from archlab.train.workdir import restore_params

    quiet = dict(progress=False, echo=lambda *a: None)
    config = tiny_config("mlp", train__ema_decay=0.8, train__steps=8, checkpoint__every=4, train__eval_every=100)
    straight = train_and_evaluate(config, str(tmp_path / "straight"), **quiet)
    train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=4, **quiet)
    resumed = train_and_evaluate(config, str(tmp_path / "resumed"), **quiet)
    assert resumed["eval"] == straight["eval"]
    checkpointer = Checkpointer(str(tmp_path / "resumed" / "checkpoints"), keep=3, read_only=True)
    state, _, _ = checkpointer.restore_latest(Run(config).abstract_state)
    checkpointer.close()
    _, params, _, step = restore_params(str(tmp_path / "resumed"), notify=lambda m: None)
    assert step == 8
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, state.ema_params)
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, state.params)))


def test_a_checkpoint_from_before_ema_restores_with_ema_off(tmp_path):
    from flax import struct

    from archlab.train.checkpoint import Checkpointer
    from archlab.train.compiled_run import Run

    @struct.dataclass
    class OldTrainState:  # TrainState before ema_params existed
        step: jax.Array
        params: object
        opt_state: object
        model_state: object
        rng: jax.Array
        nonfinite_step: jax.Array

    run = Run(tiny_config(train__steps=4))
    state = run.init_state(0)
    old = OldTrainState(**{k: getattr(state, k) for k in OldTrainState.__dataclass_fields__})
    saver = Checkpointer(str(tmp_path), keep=2)
    saver.save(0, old, {"position": 0})
    saver.close()
    reader = Checkpointer(str(tmp_path), keep=2, read_only=True)
    restored, _, step = reader.restore_latest(run.abstract_state, notify=lambda m: pytest.fail(m))
    reader.close()
    assert step == 0 and restored.ema_params is None
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), restored.params, state.params)


def test_top_p():
    from archlab.train.sampling import sample_logits

    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 50)) * 3
    keys = jax.random.split(jax.random.PRNGKey(1), 64)
    tiny = jax.vmap(lambda k: sample_logits(logits, k, 1.0, 0, 1e-6))(keys)
    assert (np.asarray(tiny) == np.argmax(np.asarray(logits), -1)).all()
    for k in keys[:8]:
        assert (np.asarray(sample_logits(logits, k, 0.9, 0, 1.0)) == np.asarray(sample_logits(logits, k, 0.9, 0))).all()
    # probabilities .4 .3 .2 .1: top_p=.6 keeps the first two tokens (.4 < .6 <= .7)
    four = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
    drawn = {int(sample_logits(four, k, 1.0, 0, 0.6)[0]) for k in keys}
    assert drawn == {1, 3}


def test_cli_lion_rsqrt_ema_then_sample_with_top_p(tmp_path):
    workdir = str(tmp_path / "run")
    flags = tiny_cli_flags(**{"train.steps": 6, "train.eval_every": 3, "checkpoint.every": 6, "sample.top_p": 0.9})
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", "--no_progress", *flags,
                   "--config.train.optimizer=lion", "--config.train.schedule=rsqrt", "--config.train.ema_decay=0.9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(EMA params)" in proc.stdout + proc.stderr
    with open(os.path.join(workdir, "config.json")) as f:
        train = json.load(f)["config"]["train"]
    assert (train["optimizer"], train["schedule"], train["ema_decay"]) == ("lion", "rsqrt", 0.9)
    sample = run_cli("launch.sample", f"--workdir={workdir}", "--prompt=ab", "--length=8", "--top_p=0.9")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ab")
    assert_one_line_error(run_cli("launch.sample", f"--workdir={workdir}", "--top_p=1.5"), "--top_p", "[0, 1]")


def test_cli_refuses_an_unknown_optimizer(tmp_path):
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={tmp_path / 'w'}", "--config.train.optimizer=rmsprop")
    assert_one_line_error(proc, "train.optimizer", "adamw", "lion", "rmsprop")
    assert not (tmp_path / "w" / "checkpoints").exists()

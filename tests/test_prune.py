"""Global magnitude pruning (train/optim/prune.py): exact zeros through updates and save/restore,
the sparsity schedule, one global threshold, and bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archlab.train.checkpoint import Checkpointer
from archlab.train.compiled_run import Run
from archlab.train.config import ConfigError
from archlab.train.loop import train_and_evaluate
from archlab.train.optim import make_optimizer, prune

from conftest import assert_one_line_error, run_cli, tiny_config


def _toy_params(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {
        "dense": {"kernel": jax.random.normal(k1, (16, 8)), "bias": jnp.full((8,), 1e-4, jnp.float32)},
        "conv": {"kernel": 0.1 * jax.random.normal(k2, (3, 3, 2, 4)), "bias": jnp.full((4,), 1e-4, jnp.float32)},
        "norm": {"scale": 1e-4 * jax.random.normal(k3, (8,))},
    }


def _train_toy(tx, params, steps, seed=1):
    """Updates from random gradients (one jitted step); returns (params, opt_state) after each."""

    @jax.jit
    def step(params, opt_state, i):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i), p.shape), params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    history = []
    for i in range(steps):
        params, opt_state = step(params, opt_state, i)
        history.append((params, opt_state))
    return history


def _kernel_sparsity(params):
    kernels = [params["dense"]["kernel"], params["conv"]["kernel"]]
    return sum(int(jnp.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)


def test_pruned_weights_stay_exactly_zero_under_adamw_with_weight_decay():
    tx = optax.chain(optax.adamw(0.05, weight_decay=0.5), prune.magnitude_pruning(target=0.75, start=2, end=8, every=2))
    history = _train_toy(tx, _toy_params(), 12)
    for params, opt_state in history:
        masks = prune.find_masks(opt_state)
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)  # exactly zero, not small
    params, opt_state = history[-1]
    # Adam's moments for pruned weights keep moving; the weights do not
    mu = opt_state[0][0].mu["dense"]["kernel"]
    assert np.any(np.asarray(mu)[np.asarray(params["dense"]["kernel"]) == 0] != 0)
    assert _kernel_sparsity(params) == pytest.approx(0.75, abs=0.01)
    # biases and norm scales are never pruned, however small
    assert np.all(np.asarray(params["dense"]["bias"]) != 0) and np.all(np.asarray(params["norm"]["scale"]) != 0)


def test_achieved_sparsity_follows_the_cubic_schedule():
    start, end, every, target = 2, 12, 2, 0.8
    tx = optax.chain(optax.sgd(1e-3), prune.magnitude_pruning(target=target, start=start, end=end, every=every))
    history = _train_toy(tx, _toy_params(), 16)
    n = 16 * 8 + 3 * 3 * 2 * 4
    for i, (params, _) in enumerate(history):
        count = i  # the update that produced these params had count i
        last_update = max((c for c in range(start, min(count, end) + 1) if (c - start) % every == 0 or c == end), default=None)
        expected = 0.0 if last_update is None else target * (1 - (1 - (last_update - start) / (end - start)) ** 3)
        assert _kernel_sparsity(params) == pytest.approx(int(expected * n) / n, abs=1.5 / n), (i, expected)
    assert float(prune.sparsity_at(end, target=target, start=start, end=end)) == pytest.approx(target)
    assert float(prune.sparsity_at(start, target=target, start=start, end=end)) == 0.0


def test_one_global_threshold_prunes_small_layers_harder():
    params = _toy_params()  # conv kernels are 10x smaller than dense ones
    masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    new = prune.global_magnitude_masks(params, masks, 0.5)
    conv_kept = float(jnp.mean(new["conv"]["kernel"]))
    dense_kept = float(jnp.mean(new["dense"]["kernel"]))
    assert conv_kept < 0.1 < 0.55 < dense_kept
    kernels = jnp.concatenate([jnp.abs(params["dense"]["kernel"]).ravel(), jnp.abs(params["conv"]["kernel"]).ravel()])
    kept = jnp.concatenate([new["dense"]["kernel"].ravel(), new["conv"]["kernel"].ravel()])
    assert float(jnp.max(kernels[~kept])) <= float(jnp.min(kernels[kept]))  # everything pruned is below everything kept


def _cnn(**overrides):
    values = dict(model__channels="4,8", model__dense=16, data__image_size=8, train__steps=12, train__sparsity=0.5,
                  train__prune_start=0, train__prune_end=8, train__prune_every=2, checkpoint__every=100, checkpoint__keep=5,
                  parallel__mesh="data:1")
    values.update(overrides)
    return tiny_config("cnn", **values)


def _state_at(workdir, run, step):
    checkpointer = Checkpointer(str(workdir / "checkpoints"), keep=5)
    state, _ = checkpointer.restore(step, run.abstract_state)
    checkpointer.close()
    return state


def _assert_masked_zero(state):
    masks = prune.find_masks(state.opt_state)
    assert masks is not None
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)):
        p, m = np.asarray(p), np.asarray(m)
        assert m.dtype == bool and np.all(p[~m] == 0.0)
    return masks


def test_masks_survive_kill_and_resume(tmp_path):
    config = _cnn()
    quiet = dict(progress=False, echo=lambda *a: None)
    first = train_and_evaluate(config, str(tmp_path), stop_at_step=5, **quiet)
    assert first["interrupted"]
    run = Run(config)
    at_kill = _state_at(tmp_path, run, 5)
    masks_at_kill = _assert_masked_zero(at_kill)
    assert 0 < prune.measured_sparsity(at_kill.params) < 0.5  # mid-ramp
    second = train_and_evaluate(config, str(tmp_path), **quiet)
    assert second["step"] == 12 and second["eval"]["sparsity"] == pytest.approx(0.5, abs=0.01)

    final = _state_at(tmp_path, run, 12)
    masks = _assert_masked_zero(final)
    assert prune.measured_sparsity(final.params) == pytest.approx(0.5, abs=0.01)
    for before, after in zip(jax.tree.leaves(masks_at_kill), jax.tree.leaves(masks)):
        assert not np.any(np.asarray(after) & ~np.asarray(before))  # pruned weights never come back


def test_pruning_off_leaves_the_optimizer_state_unchanged():
    plain = tiny_config("cnn")
    tx = make_optimizer(plain.train)
    assert prune.find_masks(tx.init({"k": {"kernel": jnp.ones((2, 2))}})) is None


@pytest.mark.parametrize("overrides, fragment", [
    ({"train.sparsity": "1.0"}, "train.sparsity must be in [0, 1)"),
    ({"train.sparsity": "-0.1"}, "train.sparsity must be in [0, 1)"),
    ({"train.sparsity": "0.5", "train.prune_end": "50", "train.steps": "20"}, "prune_end <= train.steps"),
    ({"train.sparsity": "0.5", "train.prune_start": "10", "train.prune_end": "5"}, "prune_start < train.prune_end"),
    ({"train.prune_every": "0"}, "train.prune_every >= 1"),
])
def test_bad_pruning_config_is_one_line(overrides, fragment):
    from archlab.train.config import apply_overrides, get_config

    with pytest.raises(ConfigError) as e:
        apply_overrides(get_config("cnn"), overrides)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_cli_rejects_sparsity_of_one():
    proc = run_cli("launch.train", "--model=cnn", "--config.train.sparsity=1", "--dry_run")
    assert_one_line_error(proc, "train.sparsity must be in [0, 1)")

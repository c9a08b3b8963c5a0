"""The pure train step: one compile, gradient accumulation, non-finite guard."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archlab.arch import get_model_spec
from archlab.train.data.text import embedded_text_splits, window_stream
from archlab.train.optim import make_optimizer
from archlab.train.state import init_train_state
from archlab.train.step import make_train_step
from archlab.train.tasks import get_task

from conftest import tiny_config


def _setup(**overrides):
    config = tiny_config(parallel__mesh="data:1", **overrides)
    module = get_model_spec("transformer").make_module(config.model)
    tx = make_optimizer(config.train)
    state = nn.meta.unbox(init_train_state(module, tx, jnp.zeros((1, 32), jnp.int32), jax.random.PRNGKey(0)))
    it = window_stream(embedded_text_splits().train, config.train.batch_size, 32, seed=0, shard=0, num_shards=1)
    return config, module, tx, state, it


def test_train_step_traces_once_and_loss_falls():
    config, module, tx, state, it = _setup(train__learning_rate="3e-3")
    step = make_train_step(module=module, task=get_task("lm"), tx=tx)
    step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
    losses = []
    for i in range(30):
        state, metrics = step(state, jax.tree.map(jnp.asarray, next(it)), jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_gradient_accumulation_matches_the_full_batch():
    config, module, tx, state, it = _setup()
    batch = jax.tree.map(jnp.asarray, next(it))
    full = make_train_step(module=module, task=get_task("lm"), tx=tx, grad_accum_steps=1)
    accum = make_train_step(module=module, task=get_task("lm"), tx=tx, grad_accum_steps=4)
    s_full, m_full = jax.jit(full)(state, batch, jax.random.PRNGKey(0))
    s_acc, m_acc = jax.jit(accum)(state, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(m_acc["loss"], m_full["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_acc["grad_norm"], m_full["grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_full.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_non_finite_step_keeps_params_and_records_the_step():
    config, module, tx, state, it = _setup()
    step = jax.jit(make_train_step(module=module, task=get_task("lm"), tx=tx))
    state, _ = step(state, jax.tree.map(jnp.asarray, next(it)), jax.random.PRNGKey(0))
    assert int(state.nonfinite_step) == -1
    poisoned = state.replace(params={**state.params, "embed": {"embedding": state.params["embed"]["embedding"].at[:].set(jnp.nan)}})
    after, metrics = step(poisoned, jax.tree.map(jnp.asarray, next(it)), jax.random.PRNGKey(1))
    assert not np.isfinite(float(metrics["loss"]))
    assert int(after.nonfinite_step) == 1 and int(after.step) == 2
    for a, b in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(poisoned.opt_state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after.params["layer_0"]["mlp"]["wi"], poisoned.params["layer_0"]["mlp"]["wi"])

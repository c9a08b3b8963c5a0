"""The per-family contract of the model-zoo issue, for the families whose own test files do not
already pin it: every parameter gets a finite, non-zero gradient, and a tiny config overfits one
fixed batch (loss falls by the stated factor)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from archlab.arch import get_model_spec
from archlab.train.data import make_dataset
from archlab.train.state import init_train_state
from archlab.train.tasks import get_task

# model: (tiny overrides, Adam steps, required drop factor)
FAMILIES = {
    "transformer": ({}, 150, 5.0),
    "lstm": ({"model__embed_dim": "16", "model__hidden": "32"}, 150, 5.0),
    "gru": ({"model__embed_dim": "16", "model__hidden": "32"}, 150, 5.0),
    "rnn": ({"model__embed_dim": "16", "model__hidden": "32"}, 150, 5.0),
    "resnet18": ({"model__width": "8", "data__image_size": "16"}, 100, 10.0),
    "resnet50": ({"model__width": "8", "data__image_size": "16"}, 100, 10.0),
}


def _setup(name):
    overrides, steps, factor = FAMILIES[name]
    config = tiny_config(name, train__batch_size="8", **overrides)
    spec = get_model_spec(name)
    task = get_task(spec.task)
    data = make_dataset(spec.task, config)
    module = spec.make_module(config.model)
    batch = jax.tree.map(jnp.asarray, data.train.batch_at(0))
    tx = optax.adam(1e-2)
    state = nn.meta.unbox(init_train_state(module, tx, jnp.asarray(data.example_input), jax.random.PRNGKey(0)))
    return task, module, batch, tx, state, steps, factor


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    """After one update: ResNet blocks start with their last BatchNorm scale at zero (each block
    the identity, Goyal et al. 2017), so at init the branch's inner params get exactly zero gradient."""
    task, module, batch, tx, state, _, _ = _setup(name)
    loss_of = lambda p: task.loss_fn(module, p, state.model_state, batch, jax.random.PRNGKey(1), True)[0]
    updates, _ = tx.update(jax.grad(loss_of)(state.params), tx.init(state.params), state.params)
    grads = jax.grad(loss_of)(optax.apply_updates(state.params, updates))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tiny_config_overfits_one_batch(name):
    task, module, batch, tx, state, steps, factor = _setup(name)

    @jax.jit
    def step(params, model_state, opt_state):
        (loss, (_, model_state)), grads = jax.value_and_grad(
            lambda p: task.loss_fn(module, p, model_state, batch, jax.random.PRNGKey(2), True), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), model_state, opt_state, loss

    params, model_state, opt_state = state.params, state.model_state, tx.init(state.params)
    first = None
    for _ in range(steps):
        params, model_state, opt_state, loss = step(params, model_state, opt_state)
        first = float(loss) if first is None else first
    assert float(loss) < first / factor, (first, float(loss))

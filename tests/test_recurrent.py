"""Recurrent LMs (rnn, lstm, gru): shapes, parameter count, causality, stateful decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from arch import get_model_spec
from arch.rnn import GATES
from train.sampling import init_cache
from train.state import param_count
from train.tasks import get_task

KINDS = ["rnn", "lstm", "gru"]


def _build(kind):
    config = tiny_config(kind, model__embed_dim="8", model__hidden="16")
    spec = get_model_spec(kind)
    module = spec.make_module(config.model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)), jnp.int32)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), tokens)["params"])
    return config, spec, module, params, tokens


@pytest.mark.parametrize("kind", KINDS)
def test_shape_and_parameter_count(kind):
    _, _, module, params, tokens = _build(kind)
    assert module.apply({"params": params}, tokens).shape == (2, 12, 256)
    g = GATES[kind] * 16
    layer_1, layer_2 = 8 * g + 16 * g + g, 16 * g + 16 * g + g  # two layers: inputs of 8 (embed), then 16
    assert param_count(params) == 256 * 8 + layer_1 + layer_2 + 2 * 16 + 16 * 256


@pytest.mark.parametrize("kind", KINDS)
def test_future_tokens_never_change_past_logits(kind):
    _, _, module, params, tokens = _build(kind)
    base = module.apply({"params": params}, tokens)
    changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 256)
    out = module.apply({"params": params}, changed)
    np.testing.assert_array_equal(out[:, :6], base[:, :6])
    assert not np.allclose(out[:, 6:], base[:, 6:])


@pytest.mark.parametrize("kind", KINDS)
def test_stateful_decoding_matches_the_full_sequence(kind):
    config, spec, module, params, tokens = _build(kind)
    decoder = spec.make_module(config.model, decode=True)
    cache = init_cache(decoder, 2, config.model.max_len)
    outs = []
    logits, upd = decoder.apply({"params": params, "cache": cache}, tokens[:, :5], mutable=["cache"])
    outs.append(logits)
    cache = upd["cache"]
    for t in range(5, 12):
        logits, upd = decoder.apply({"params": params, "cache": cache}, tokens[:, t : t + 1], mutable=["cache"])
        cache = upd["cache"]
        outs.append(logits)
    np.testing.assert_allclose(np.concatenate(outs, 1), module.apply({"params": params}, tokens), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_finite_nonzero_gradient(kind):
    _, _, module, params, tokens = _build(kind)
    loss = lambda p: get_task("lm").loss_fn(module, p, {}, {"tokens": tokens}, None, False)[0]
    for path, g in jax.tree_util.tree_leaves_with_path(jax.grad(loss)(params)):
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)

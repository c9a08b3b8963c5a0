"""Recurrent LMs (rnn, lstm, gru): shapes, parameter count, causality, stateful decoding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from archlab.arch import get_model_spec
from archlab.arch.rnn import GATES
from archlab.train.sampling import init_cache
from archlab.train.state import param_count
from archlab.train.tasks import get_task

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


# --- the recurrent sequence classifiers (which help topic a window of bytes comes from)


def _classifier(kind, **overrides):
    config = tiny_config(f"{kind}_classifier", model__embed_dim="8", model__hidden="16", model__num_layers="1",
                         model__dropout_rate="0.0", data__seq_len="24", **overrides)
    module = get_model_spec(f"{kind}_classifier").make_module(config.model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 24)), jnp.int32)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), tokens)["params"])
    return config, module, params, tokens


@pytest.mark.parametrize("kind", KINDS)
def test_classifier_shape_parameter_count_and_gradients(kind):
    _, module, params, tokens = _classifier(kind)
    assert module.apply({"params": params}, tokens).shape == (4, 8)
    g = GATES[kind] * 16
    assert param_count(params) == 256 * 8 + (8 * g + 16 * g + g) + 2 * 32 + (32 * 8 + 8)
    labels = jnp.arange(4, dtype=jnp.int32)
    loss = lambda p: get_task("classification").loss_fn(module, p, {}, {"inputs": tokens, "labels": labels}, None, False)[0]
    for path, grad in jax.tree_util.tree_leaves_with_path(jax.grad(loss)(params)):
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), jax.tree_util.keystr(path)


def test_classifier_overfits_one_batch():
    """A fixed batch of 8 windows with 8 labels: loss falls by 20x in 150 Adam steps."""
    import optax

    _, module, params, _ = _classifier("lstm")
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (8, 24)), jnp.int32)
    batch = {"inputs": tokens, "labels": jnp.arange(8, dtype=jnp.int32)}
    loss = lambda p: get_task("classification").loss_fn(module, p, {}, batch, None, False)[0]
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(p, o):
        value, grads = jax.value_and_grad(loss)(p)
        updates, o = tx.update(grads, o)
        return optax.apply_updates(p, updates), o, value

    first = float(loss(params))
    for _ in range(150):
        params, opt, _ = step(params, opt)
    assert float(loss(params)) < first / 20


def test_topic_windows_come_from_their_class_and_the_test_tail_is_held_out():
    from archlab.train.data import make_dataset
    from archlab.train.data.topics import TOPIC_CLASSES, labelled_texts

    config = tiny_config("lstm_classifier", data__seq_len="32", train__eval_batches="0")
    data = make_dataset("classification", config)
    names, texts, _ = labelled_texts("")
    assert tuple(names) == TOPIC_CLASSES and data.num_classes == 8
    batch = data.train.batch_at(3)
    for window, label in zip(batch["inputs"], batch["labels"]):
        text, cut = texts[label].tobytes(), len(texts[label]) - int(len(texts[label]) * 0.2)
        assert text[:cut].find(bytes(window.astype(np.uint8))) >= 0  # a window of its class's training head
    for batch, weights in data.eval_batches:
        for window, label, w in zip(batch["inputs"], batch["labels"], weights):
            if w:
                text = texts[label].tobytes()
                cut = len(text) - int(len(text) * 0.2)
                assert text.find(bytes(window.astype(np.uint8)), cut) >= cut  # from the held-out tail
    assert set(np.concatenate([b["labels"][w > 0] for b, w in data.eval_batches])) == set(range(8))


def test_topic_classifier_reads_a_directory_of_class_files_and_rejects_bad_paths(tmp_path):
    from archlab.train.data import DataError, make_dataset

    for name, text in (("alpha", b"abc " * 200), ("beta", b"xyz! " * 200)):
        (tmp_path / f"{name}.txt").write_bytes(text)
    config = tiny_config("lstm_classifier", data__seq_len="16", data__path=str(tmp_path))
    data = make_dataset("classification", config)
    assert data.num_classes == 2 and "alpha, beta" in data.description
    with pytest.raises(DataError, match="not a directory"):
        make_dataset("classification", tiny_config("lstm_classifier", data__path=str(tmp_path / "alpha.txt")))
    (tmp_path / "beta.txt").unlink()
    with pytest.raises(DataError, match="need one text file per class"):
        make_dataset("classification", config)

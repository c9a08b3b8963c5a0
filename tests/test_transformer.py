"""The Transformer LM: causality, shapes, parameter count, KV-cache decoding, scan/remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from archlab.arch import get_model_spec
from archlab.train.sampling import generate, init_cache
from archlab.train.state import param_count


def _build(**overrides):
    config = tiny_config(**overrides)
    spec = get_model_spec("transformer")
    module = spec.make_module(config.model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), tokens)["params"])
    return config, spec, module, params, tokens


def test_shapes_and_parameter_count():
    config, _, module, params, tokens = _build()
    logits = module.apply({"params": params}, tokens)
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
    d, mlp, layers, vocab = 32, 64, 2, 256
    per_layer = 2 * d + 3 * d * d + d * d + 2 * d + d * mlp + mlp + mlp * d + d
    assert param_count(params) == vocab * d + layers * per_layer + 2 * d == 25088


def test_untied_and_learned_positions_add_their_parameters():
    _, _, _, params, _ = _build(model__tie_embeddings="false", model__positional="learned")
    assert param_count(params) == 25088 + 32 * 256 + 32 * 32


@pytest.mark.parametrize("positional", ["rotary", "learned"])
def test_causal_mask_future_tokens_never_change_past_logits(positional):
    _, _, module, params, tokens = _build(model__positional=positional)
    base = module.apply({"params": params}, tokens)
    for t in (0, 5, 14):
        changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 17) % 256)
        out = module.apply({"params": params}, changed)
        np.testing.assert_array_equal(np.asarray(out[:, : t + 1]), np.asarray(base[:, : t + 1]))
        assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :])  # the change is visible later


def test_kv_cache_decoding_matches_full_forward():
    config, spec, module, params, tokens = _build()
    full = module.apply({"params": params}, tokens)
    decoder = spec.make_module(config.model, decode=True)
    cache = init_cache(decoder, 2, config.model.max_len)
    # prefill 10 tokens at once, then feed the rest one at a time
    logits, upd = decoder.apply({"params": params, "cache": cache}, tokens[:, :10], mutable=["cache"])
    outs = [logits]
    cache = upd["cache"]
    for t in range(10, 16):
        logits, upd = decoder.apply({"params": params, "cache": cache}, tokens[:, t : t + 1], mutable=["cache"])
        cache = upd["cache"]
        outs.append(logits)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=2e-5, rtol=1e-5)


def test_ring_buffer_decoding_past_the_context_matches_a_sliding_window():
    """Past max_len, each new token attends to exactly the last max_len positions.

    One layer, so cached keys depend only on their own token (deeper layers' keys carry context
    from before the window, which a fresh forward pass over the window cannot reproduce).
    """
    config, spec, module, params, _ = _build(model__max_len="8", data__seq_len="8", model__num_layers="1")
    rng = np.random.default_rng(1)
    seq = jnp.asarray(rng.integers(0, 256, (1, 13)), jnp.int32)
    decoder = spec.make_module(config.model, decode=True)
    cache = init_cache(decoder, 1, 8)
    for t in range(13):
        logits, upd = decoder.apply({"params": params, "cache": cache}, seq[:, t : t + 1], mutable=["cache"])
        cache = upd["cache"]
    window = seq[:, 13 - 8 :]  # rotary: only relative positions matter
    expected = module.apply({"params": params}, window)[:, -1]
    np.testing.assert_allclose(logits[:, -1], expected, atol=2e-5, rtol=1e-5)


def test_generate_is_deterministic_and_greedy_follows_argmax():
    config, spec, module, params, _ = _build()
    decoder = spec.make_module(config.model, decode=True)
    out1 = generate(decoder, params, b"abc", 40, max_len=32, rng=jax.random.PRNGKey(3), temperature=0.0)
    out2 = generate(decoder, params, b"abc", 40, max_len=32, rng=jax.random.PRNGKey(9), temperature=0.0)
    assert out1 == out2 and len(out1) == 40
    # the first greedy byte is the argmax of the full forward pass at the prompt's end
    logits = module.apply({"params": params}, jnp.asarray([list(b"abc")], jnp.int32))
    assert out1[0] == int(jnp.argmax(logits[0, -1]))


def test_learned_positions_refuse_to_generate_past_max_len():
    config, spec, _, params, _ = _build(model__positional="learned")
    decoder = spec.make_module(config.model, decode=True)
    with pytest.raises(ValueError, match="learned positions"):
        generate(decoder, params, b"abc", 40, max_len=32, rng=jax.random.PRNGKey(0))


def test_remat_gives_identical_outputs_and_scan_layers_stacks_params():
    _, _, module, params, tokens = _build()
    config_remat, spec, _, _, _ = _build(model__remat="true")
    remat_module = spec.make_module(config_remat.model)
    np.testing.assert_allclose(remat_module.apply({"params": params}, tokens), module.apply({"params": params}, tokens), atol=1e-6)

    config_scan, spec, _, _, _ = _build(model__scan_layers="true")
    scan_module = spec.make_module(config_scan.model)
    boxed = scan_module.init(jax.random.PRNGKey(0), tokens)["params"]
    assert boxed["layers"]["attn"]["qkv"].names == ("layers", "embed", None, "heads", "kv")
    scan_params = nn.meta.unbox(boxed)
    assert scan_params["layers"]["attn"]["qkv"].shape == (2, 32, 3, 2, 16)
    # same weights laid out per layer give the same function
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), params["layer_0"], params["layer_1"])
    scan_params = dict(scan_params, layers=stacked, embed=params["embed"], ln_final=params["ln_final"])
    np.testing.assert_allclose(scan_module.apply({"params": scan_params}, tokens), module.apply({"params": params}, tokens), atol=2e-5)


def test_bfloat16_compute_keeps_float32_params():
    config, spec, _, _, tokens = _build(model__dtype="bfloat16")
    module = spec.make_module(config.model)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), tokens)["params"])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert module.apply({"params": params}, tokens).dtype == jnp.float32


def test_rotary_embedding_equals_the_written_out_rotation():
    """Pins RoPE's math so a faster formulation (docs/performance.md) cannot change it: each pair
    (x_i, x_{i+half}) rotates by position * base^(-i/half)."""
    from archlab.arch.layers import rotary_embedding

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 3, 16)).astype(np.float32)
    positions = np.stack([np.arange(8), np.arange(5, 13)]).astype(np.int32)
    half = 8
    angle = positions[:, :, None, None] * 10_000.0 ** (-np.arange(half) / half)  # [B, T, 1, half]
    x1, x2 = x[..., :half].astype(np.float64), x[..., half:].astype(np.float64)
    expected = np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], -1)
    np.testing.assert_allclose(np.asarray(rotary_embedding(jnp.asarray(x), jnp.asarray(positions))), expected, atol=2e-5)


def _straightforward_logits(params, tokens, num_heads):
    """The model written out plainly: per-layer RoPE from positions, the full masked T x T square,
    the 1/sqrt(head_dim) scale on the scores. The fast path (static tables once per model, the
    scale folded into the query's tables, causal query blocks) must compute the same function."""

    def layer_norm(x, p):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-6) * p["scale"] + p["bias"]

    def rope(x, positions):
        half = x.shape[-1] // 2
        angle = positions[:, :, None, None] * 10_000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * jnp.cos(angle) - x2 * jnp.sin(angle), x2 * jnp.cos(angle) + x1 * jnp.sin(angle)], -1)

    batch, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32), (batch, length))
    table = params["embed"]["embedding"]
    x = table[tokens]
    for i in range(sum(k.startswith("layer_") for k in params)):
        p = params[f"layer_{i}"]
        h = layer_norm(x, p["ln_attn"])
        qkv = jnp.einsum("btd,dsnh->btsnh", h, p["attn"]["qkv"])
        q, k, v = rope(qkv[:, :, 0], positions), rope(qkv[:, :, 1], positions), qkv[:, :, 2]
        scores = jnp.einsum("bqnh,bknh->bnqk", q, k) / jnp.sqrt(q.shape[-1])
        scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, -jnp.inf)
        attn = jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(scores, -1), v)
        x = x + jnp.einsum("bqnh,nhd->bqd", attn, p["attn"]["out"])
        h = layer_norm(x, p["ln_mlp"])
        h = jax.nn.gelu(h @ p["mlp"]["wi"] + p["mlp"]["bi"])
        x = x + h @ p["mlp"]["wo"] + p["mlp"]["bo"]
    return layer_norm(x, params["ln_final"]) @ table.T


@pytest.mark.parametrize("length", [16, 15])  # 15: the query blocks do not divide it (one block)
def test_fast_attention_path_equals_the_straightforward_model(length):
    """Outputs and gradients of the model equal the plainly written model (docs/performance.md):
    the speed-ups may not change the function, only how it is computed."""
    _, _, module, params, tokens = _build(model__num_heads="2")
    tokens = tokens[:, :length]
    np.testing.assert_allclose(module.apply({"params": params}, tokens), _straightforward_logits(params, tokens, 2), atol=2e-6, rtol=1e-5)

    def loss(fn):
        return lambda p: jnp.mean(jax.nn.log_softmax(fn(p))[..., 0])

    fast = jax.grad(loss(lambda p: module.apply({"params": p}, tokens)))(params)
    plain = jax.grad(loss(lambda p: _straightforward_logits(p, tokens, 2)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), fast, plain)


@pytest.mark.parametrize("blocks", [1, 2, 4, 3])  # 3 does not divide 16: falls back to one block
def test_causal_query_blocks_equal_the_full_masked_square(blocks):
    from archlab.arch.layers import causal_attention, masked_attention

    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 16, 3, 8)), jnp.float32) for _ in range(3))
    full = masked_attention(q, k, v, jnp.tril(jnp.ones((16, 16), bool)))
    np.testing.assert_allclose(causal_attention(q, k, v, query_blocks=blocks), full, atol=1e-6)
    grad = lambda f: jax.grad(lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))), argnums=(0, 1, 2))(q, k, v)
    blocked = grad(lambda q, k, v: causal_attention(q, k, v, query_blocks=blocks))
    square = grad(lambda q, k, v: masked_attention(q, k, v, jnp.tril(jnp.ones((16, 16), bool))))
    for a, b in zip(blocked, square):
        np.testing.assert_allclose(a, b, atol=1e-6)

"""Autoregressive sampling from a language model with a KV cache, compiled as one program.

The prompt is fed once (prefill), then each new token costs one single-token forward pass that
reads keys/values from the cache; the whole loop is a ``lax.scan`` inside one ``jit``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def init_cache(decode_module: nn.Module, batch: int, max_len: int):
    """An all-empty KV cache for ``decode_module`` (shapes from ``eval_shape``, values zero)."""
    shapes = jax.eval_shape(
        lambda: decode_module.init(jax.random.key(0), jnp.zeros((batch, max_len), jnp.int32))
    )["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def sample_logits(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int, top_p: float = 0.0) -> jax.Array:
    """Draws token ids from [batch, vocab] logits; temperature 0 means greedy. ``top_k`` > 0 keeps
    the k likeliest tokens; ``top_p`` in (0, 1) keeps the fewest likeliest tokens whose probability
    reaches ``top_p`` (nucleus sampling; 0 or 1 = off)."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if 0 < top_p < 1:
        logits = _nucleus(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1)


def _nucleus(logits: jax.Array, top_p: float) -> jax.Array:
    # A token stays if the tokens likelier than it hold less than top_p: the likeliest always stays.
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


@functools.partial(jax.jit, static_argnames=("decode_module", "length", "temperature", "top_k", "top_p"))
def _generate(decode_module, params, cache, prompt_tokens, rng, *, length, temperature, top_k, top_p=0.0):
    logits, updates = decode_module.apply({"params": params, "cache": cache}, prompt_tokens, mutable=["cache"])
    cache = updates["cache"]

    def step(carry, step_rng):
        cache, last_logits = carry
        token = sample_logits(last_logits, step_rng, temperature, top_k, top_p)
        logits, updates = decode_module.apply({"params": params, "cache": cache}, token[:, None], mutable=["cache"])
        return (updates["cache"], logits[:, -1]), token

    _, tokens = jax.lax.scan(step, (cache, logits[:, -1]), jax.random.split(rng, length))
    return tokens.T  # [batch, length]


def generate_tokens(
    decode_module: nn.Module,
    params,
    prompt_ids,
    length: int,
    *,
    max_len: int,
    rng: jax.Array,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 0.0,
) -> np.ndarray:
    """``length`` token ids continuing ``prompt_ids`` (non-empty); the context window is the last ``max_len`` ids."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    prompt_ids = np.asarray(prompt_ids, np.int32).reshape(-1)
    if not prompt_ids.size:
        raise ValueError("the prompt holds no tokens")
    if getattr(decode_module, "positional", "rotary") == "learned" and min(len(prompt_ids), max_len) + length > max_len:
        raise ValueError(
            f"a model with learned positions can generate at most {max_len} tokens including the prompt; "
            f"asked for {min(len(prompt_ids), max_len)} + {length}"
        )
    prompt_tokens = jnp.asarray(prompt_ids[-max_len:])[None]
    cache = init_cache(decode_module, 1, max_len)
    tokens = _generate(
        decode_module, params, cache, prompt_tokens, rng, length=length, temperature=float(temperature), top_k=int(top_k),
        top_p=float(top_p),
    )
    return np.asarray(tokens[0], np.int32)


def generate(decode_module: nn.Module, params, prompt: bytes, length: int, **kwargs) -> bytes:
    """Continues ``prompt`` by ``length`` bytes (a byte-level model); keywords as :func:`generate_tokens`."""
    ids = np.frombuffer(prompt or b"\n", np.uint8)
    return bytes(generate_tokens(decode_module, params, ids, length, **kwargs).astype(np.uint8).tolist())


def generate_text(decode_module: nn.Module, params, prompt: str, length: int, *, tokenizer, **kwargs) -> str:
    """The text ``length`` tokens continue ``prompt`` with, encoded and decoded by the run's ``tokenizer``
    (train.data.tokenizer); keywords as :func:`generate_tokens`."""
    prompt_ids = tokenizer.encode(prompt)
    if not len(prompt_ids):
        prompt_ids = tokenizer.encode("\n")
    new_ids = generate_tokens(decode_module, params, prompt_ids, length, **kwargs)
    # decoded after the prompt, so a piece's leading space or a character split across the
    # boundary comes out as it would in the whole text
    head = tokenizer.decode(prompt_ids)
    whole = tokenizer.decode(np.concatenate([prompt_ids, new_ids]))
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(new_ids)

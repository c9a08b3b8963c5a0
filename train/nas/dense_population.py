"""Train a population of MLPs of different depth, widths and activations in one compiled program.

A member of ``arch.search_space.DenseSpace`` is a padded ``max_depth x max_width`` MLP whose
``to_masks`` say which layers and units it has: masked units output exactly zero and a layer beyond
the member's depth passes its input through, so a member computes (and gets the gradients of) the
narrower, shallower plain MLP made of its active slice of the padded weights. Every member then has
the same array shapes: the population is params with a leading ``P`` axis, and
``train_dense_population`` runs ``jit`` of a ``scan`` over steps of the ``vmap``-ed members (batched
matmuls), each member with its own AdamW state. Batches follow ``train.nas.population``'s convention
(``randint(fold_in(data_rng, step))``), so both scorers see the same data stream.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from archlab.arch.search_space import DenseSpace
from archlab.train.nas.population import PopulationData
from archlab.train.nas.small_jit import small_jit

ACTIVATIONS = {
    "relu": jax.nn.relu, "gelu": jax.nn.gelu, "tanh": jnp.tanh, "swish": jax.nn.swish, "silu": jax.nn.silu,
    "elu": jax.nn.elu, "sigmoid": jax.nn.sigmoid, "identity": lambda x: x,
}


def check_activations(names) -> None:
    """ValueError (one line) unless every name is a known activation."""
    unknown = [name for name in names if name not in ACTIVATIONS]
    if unknown or not names:
        raise ValueError(f"unknown activation {unknown[0] if unknown else '(none given)'!r}; valid: {', '.join(ACTIVATIONS)}")


def init_dense_population(rng: jax.Array, space: DenseSpace, codes, in_features: int, num_classes: int = 10) -> dict:
    """Padded params with a leading P axis: normal weights of variance 1 / fan-in, each member's own fan-in (not the padded one).

    ``w_in [P, in, W]``, ``w_hidden [P, D-1, W, W]``, ``w_out [P, W, classes]`` and zero biases, where
    ``D, W = space.max_depth, space.max_width``. Slicing member p's active rows and columns gives the
    plain MLP it stands for, initialised as that MLP would be.
    """
    masks = space.to_masks(codes)
    P = len(masks["depth"])
    width = masks["width"].astype(np.float32)  # [P, D]
    head_fan_in = width[np.arange(P), masks["depth"] - 1]
    return _init_params(rng, jnp.asarray(width[:, :-1]), jnp.asarray(head_fan_in), in_features=in_features,
                        max_width=space.max_width, num_classes=num_classes)


@partial(small_jit, static_argnames=("in_features", "max_width", "num_classes"))
def _init_params(rng, hidden_fan_in, head_fan_in, *, in_features, max_width, num_classes):
    # one small jit: eagerly, each new shape's PRNG kernels compile on their own (measured: 7 s vs ~1 s)
    (P, depth_minus_1), W = hidden_fan_in.shape, max_width
    k_in, k_hidden, k_out = jax.random.split(rng, 3)
    normal = lambda key, shape: jax.random.normal(key, shape, jnp.float32)
    return {
        "w_in": normal(k_in, (P, in_features, W)) / np.sqrt(in_features),
        "b_in": jnp.zeros((P, W), jnp.float32),
        "w_hidden": normal(k_hidden, (P, depth_minus_1, W, W)) * jax.lax.rsqrt(hidden_fan_in)[:, :, None, None],
        "b_hidden": jnp.zeros((P, depth_minus_1, W), jnp.float32),
        "w_out": normal(k_out, (P, W, num_classes)) * jax.lax.rsqrt(head_fan_in)[:, None, None],
        "b_out": jnp.zeros((P, num_classes), jnp.float32),
    }


def member_logits(params: dict, masks: dict, x: jax.Array, activations: tuple[str, ...]) -> jax.Array:
    """One member's logits ``[B, classes]`` (params and masks without the P axis; vmap for a population)."""
    fns = [ACTIVATIONS[name] for name in activations]

    def layer(h, w, b, index):
        z = h @ w + b
        return jax.lax.select_n(masks["activation"][index], *(f(z) for f in fns)) * masks["unit_active"][index]

    h = layer(x, params["w_in"], params["b_in"], 0)  # depth >= 1: layer 0 is always active
    for index in range(1, masks["unit_active"].shape[0]):
        out = layer(h, params["w_hidden"][index - 1], params["b_hidden"][index - 1], index)
        h = jnp.where(masks["layer_active"][index] > 0, out, h)  # beyond the depth: pass through
    return h @ params["w_out"] + params["b_out"]


def population_logits(params: dict, masks: dict, x: jax.Array, activations: tuple[str, ...]) -> jax.Array:
    """Logits ``[P, B, classes]`` of every member on the same inputs ``x [B, features]``."""
    return jax.vmap(partial(member_logits, activations=activations), in_axes=(0, 0, None))(params, masks, x)


def _masks_on_device(space: DenseSpace, codes) -> dict:
    masks = space.to_masks(codes)
    return {key: jnp.asarray(masks[key]) for key in ("layer_active", "unit_active", "activation")}


def batch_rows(data_rng: jax.Array, step, size: int, batch_size: int) -> jax.Array:
    """The training rows of ``step``: the same convention as ``train.nas.population``."""
    return jax.random.randint(jax.random.fold_in(data_rng, step), (batch_size,), 0, size)


def _flat(images: jax.Array) -> jax.Array:
    return images.reshape(images.shape[0], -1)


@partial(jax.jit, static_argnames=("activations", "steps", "batch_size"))
def _train_program(params, masks, data_rng, data: PopulationData, learning_rate, weight_decay, *, activations, steps, batch_size):
    tx = optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)  # elementwise: per member
    train_x, val_x = _flat(data.train_images), _flat(data.val_images)

    def population_loss(p, x, y):
        logits = population_logits(p, masks, x, activations)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.broadcast_to(y, logits.shape[:-1])).mean(-1)
        return losses.sum(), losses  # no shared params: d(sum)/d(member m) = d(loss m)

    def step(carry, index):
        p, opt = carry
        rows = batch_rows(data_rng, index, train_x.shape[0], batch_size)
        (_, losses), grads = jax.value_and_grad(population_loss, has_aux=True)(p, train_x[rows], data.train_labels[rows])
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), losses

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    accuracy = (population_logits(params, masks, val_x, activations).argmax(-1) == data.val_labels).mean(-1)
    return params, losses, accuracy


def train_dense_population(codes, rng: jax.Array, data: PopulationData, steps: int, *, space: DenseSpace = DenseSpace(),
                           batch_size: int = 32, learning_rate: float = 1e-2, weight_decay: float = 0.0,
                           params: dict | None = None) -> dict:
    """Trains the P members ``codes [P, 1 + 2 * max_depth]`` for ``steps`` steps in one jit on flattened images.

    Returns ``{"losses": [steps, P], "val_accuracy": [P], "params": ...}``. ``params`` defaults to
    ``init_dense_population`` from the first half of ``rng``; the batches come from the second.
    Different codes with the same P reuse the compiled program (masks are data, not shapes).
    """
    check_activations(space.activations)
    codes = np.atleast_2d(np.asarray(codes, np.int32))
    init_rng, data_rng = jax.random.split(rng)
    if params is None:
        params = init_dense_population(init_rng, space, codes, int(np.prod(data.train_images.shape[1:])),
                                       int(data.train_labels.max()) + 1)
    params, losses, accuracy = _train_program(
        params, _masks_on_device(space, codes), data_rng, data, jnp.float32(learning_rate), jnp.float32(weight_decay),
        activations=tuple(space.activations), steps=int(steps), batch_size=int(batch_size))
    return {"losses": losses, "val_accuracy": accuracy, "params": params}

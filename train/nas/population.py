"""Train and score a whole population of different cell architectures in one compiled program.

``train_population(codes, rng, data, steps)`` runs ``jit(scan over steps)`` of the population
step: every member sees the same batches, has its own params, AdamW state and (optionally) its own
learning rate and weight decay, and its gradient is exactly that of its own loss (the population
loss is the sum of the members' losses, and no parameter is shared). It returns each member's
per-step training loss and its validation accuracy. ``train_member`` is the same training for one
architecture written the way a user would (a jitted step of ``member_logits``, a Python loop);
it is the baseline of the benchmark and the reference of the equality test.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from arch.nas_cell import CellNet, init_population, member_logits, op_dispatch, population_logits
from train.nas.small_jit import small_jit


@struct.dataclass
class PopulationData:
    """Images [N, H, W, C] float32 and int labels, on device; the same for every member."""

    train_images: jax.Array
    train_labels: jax.Array
    val_images: jax.Array
    val_labels: jax.Array


def digits_data(image_size: int = 16, val_fraction: float = 0.2) -> PopulationData:
    """scikit-learn's digits resized to ``image_size`` (the embedded offline default).

    Search scores use a validation split carved out of the training images, so the digits test
    split stays unseen by the search (the final model of a found cell is measured on it).
    """
    from train.image_data import _split, load_images

    splits = load_images("", image_size, val_fraction)
    x_train, y_train, x_val, y_val = _split(splits.x_train, splits.y_train, val_fraction)
    return PopulationData(*(jnp.asarray(a) for a in (x_train, y_train, x_val, y_val)))


# Initialising 16 members eagerly dispatches hundreds of small PRNG ops (measured: ~15 s cold);
# one small jit of the whole init takes ~1 s.
_init_population = small_jit(init_population, static_argnums=(1, 2))


def _optimizer() -> optax.GradientTransformation:
    # Elementwise, so applying it to stacked params updates each member independently; the
    # per-member learning rate and decoupled weight decay are applied after it.
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)


def _cross_entropy(logits, labels):
    labels = jnp.broadcast_to(labels, logits.shape[:-1])  # the same labels for every member
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(axis=-1)


def _batch_index(rng, step, size, batch_size):
    return jax.random.randint(jax.random.fold_in(rng, step), (batch_size,), 0, size)


def _apply(params, updates, learning_rate, weight_decay):
    """AdamW's last step with a learning rate / weight decay per member (leading axis) or scalar."""

    def one(p, u):
        lr = jnp.reshape(learning_rate, jnp.shape(learning_rate) + (1,) * (p.ndim - jnp.ndim(learning_rate)))
        wd = jnp.reshape(weight_decay, jnp.shape(weight_decay) + (1,) * (p.ndim - jnp.ndim(weight_decay)))
        return p - lr * (u + wd * p)

    return jax.tree.map(one, params, updates)


@partial(jax.jit, static_argnames=("steps", "batch_size"))
def _train_program(params, codes, dispatch, rng, data: PopulationData, learning_rate, weight_decay, *, steps: int, batch_size: int):
    tx = _optimizer()

    def population_loss(p, images, labels):
        losses = _cross_entropy(population_logits(p, codes, dispatch, images), labels)  # [P]
        return losses.sum(), losses  # no shared params: d(sum)/d(member m) = d(loss m)

    def step(carry, index):
        p, opt = carry
        rows = _batch_index(rng, index, data.train_images.shape[0], batch_size)
        (_, losses), grads = jax.value_and_grad(population_loss, has_aux=True)(p, data.train_images[rows], data.train_labels[rows])
        updates, opt = tx.update(grads, opt)  # elementwise over stacked params: per member
        return (_apply(p, updates, learning_rate, weight_decay), opt), losses

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    logits = population_logits(params, codes, dispatch, data.val_images)
    accuracy = (logits.argmax(-1) == data.val_labels).mean(axis=-1)
    return params, losses, accuracy


def train_population(codes, rng: jax.Array, data: PopulationData, steps: int, *, net: CellNet = CellNet(), batch_size: int = 32,
                     learning_rate=1e-2, weight_decay=0.0, params: dict | None = None, capacity: int | None = None,
                     devices: int = 1) -> dict:
    """Trains P members (``codes`` [P, 6]) for ``steps`` steps in one jit; returns
    ``{"losses": [steps, P], "val_accuracy": [P], "params": ...}``.

    ``learning_rate`` / ``weight_decay``: scalars or [P] arrays (a hyperparameter grid is one
    call). ``params`` defaults to ``init_population(rng, P, net)``. ``capacity``: (member, edge)
    pairs per node and op that get computed (see ``arch.nas_cell.op_dispatch``). ``devices`` > 1 splits the
    population axis over that many devices (a ``population`` mesh axis; P must divide).
    """
    codes = np.asarray(codes, np.int32)
    dispatch = {key: jnp.asarray(table) for key, table in op_dispatch(codes, capacity).items()}
    init_rng, data_rng = jax.random.split(rng)
    if params is None:
        params = _init_population(init_rng, len(codes), net)
    if devices > 1:
        if len(codes) % devices or devices > jax.device_count():
            raise ValueError(f"a population of {len(codes)} does not split over {devices} devices ({jax.device_count()} available)")
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("population",))
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("population"))
        params = jax.device_put(params, split)  # member m's params live on device m // (P / devices)
        learning_rate = jax.device_put(jnp.broadcast_to(jnp.asarray(learning_rate, jnp.float32), (len(codes),)), split)
        weight_decay = jax.device_put(jnp.broadcast_to(jnp.asarray(weight_decay, jnp.float32), (len(codes),)), split)
    params, losses, accuracy = _train_program(
        params, jnp.asarray(codes), dispatch, data_rng, data,
        jnp.asarray(learning_rate, jnp.float32), jnp.asarray(weight_decay, jnp.float32), steps=steps, batch_size=batch_size,
    )
    return {"losses": losses, "val_accuracy": accuracy, "params": params}


def make_member_step(genotype, *, batch_size: int = 32, learning_rate: float = 1e-2, weight_decay: float = 0.0):
    """A jitted train step for one architecture (only its chosen ops), as a user would write it."""
    genotype = tuple(int(g) for g in genotype)
    tx = _optimizer()

    @jax.jit
    def step(params, opt, rng, index, data: PopulationData):
        rows = _batch_index(rng, index, data.train_images.shape[0], batch_size)

        def loss_of(p):
            return _cross_entropy(member_logits(p, genotype, data.train_images[rows]), data.train_labels[rows])

        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt = tx.update(grads, opt)
        return _apply(params, updates, learning_rate, weight_decay), opt, loss

    return step, tx


def train_member(genotype, params: dict, rng: jax.Array, data: PopulationData, steps: int, *, batch_size: int = 32,
                 learning_rate: float = 1e-2, weight_decay: float = 0.0) -> dict:
    """One architecture trained alone with the same batches and optimizer as in the population
    (``rng`` as given to ``train_population``; ``params`` = that member's slice)."""
    step, tx = make_member_step(genotype, batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay)
    _, data_rng = jax.random.split(rng)
    opt, losses = tx.init(params), []
    for index in range(steps):
        params, opt, loss = step(params, opt, data_rng, index, data)
        losses.append(loss)
    logits = jax.jit(member_logits, static_argnums=1)(params, tuple(int(g) for g in genotype), data.val_images)
    accuracy = (logits.argmax(-1) == data.val_labels).mean()
    return {"losses": jnp.stack(losses), "val_accuracy": accuracy, "params": params}

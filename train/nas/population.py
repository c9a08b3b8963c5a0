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

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from archlab.arch.nas_cell import CellNet, init_population, member_logits, op_dispatch, population_logits
from archlab.train.data.images import load_images, split_train_test
from archlab.train.errors import PopulationMemoryError
from archlab.train.nas.small_jit import small_jit


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
    splits = load_images("", image_size, val_fraction)
    x_train, y_train, x_val, y_val = split_train_test(splits.x_train, splits.y_train, val_fraction)
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


def estimate_memory_bytes(chunk: int, *, batch_size: int, val_size: int, image_size: int, channels: int) -> int:
    """Peak temporary memory of training one chunk, estimated before anything is compiled.

    Activations scale with members x examples x H x W x C; the coefficients (about 20 buffers per
    training example, 15 per validation example, which is evaluated in one pass) were fitted to
    XLA's ``memory_analysis()`` of the compiled program on CPU and over-estimate it by up to ~30 %.
    """
    activation = chunk * image_size * image_size * channels * 4
    return activation * (20 * batch_size + 15 * val_size)


def available_memory_bytes(device: jax.Device | None = None) -> int:
    """The device's memory limit (accelerators) or the host's available memory (CPU)."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_chunk_fits(chunk: int, *, batch_size: int, val_size: int, image_size: int, channels: int, devices: int = 1) -> None:
    """Raises :class:`PopulationMemoryError` (one line) if a chunk's program will not fit."""
    needed = estimate_memory_bytes(-(-chunk // devices), batch_size=batch_size, val_size=val_size, image_size=image_size,
                                   channels=channels)
    have = available_memory_bytes()
    if needed > have:
        raise PopulationMemoryError(
            f"a population chunk of {chunk} members (batch {batch_size}, {val_size} validation images of {image_size}x{image_size}, "
            f"{channels} channels) needs about {needed / 2**30:.1f} GiB but {have / 2**30:.1f} GiB is available; use a smaller chunk"
        )


def _train_chunk(params, codes, dispatch, learning_rate, weight_decay, *, rng, data: PopulationData, steps: int, batch_size: int):
    """``scan`` over steps of one population chunk, then its validation accuracy."""
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


@partial(jax.jit, static_argnames=("steps", "batch_size", "chunked"))
def _train_program(params, codes, dispatch, rng, data: PopulationData, learning_rate, weight_decay, *, steps: int, batch_size: int,
                   chunked: bool):
    train = partial(_train_chunk, rng=rng, data=data, steps=steps, batch_size=batch_size)
    if not chunked:
        return train(params, codes, dispatch, learning_rate, weight_decay)
    # Every input has a leading chunk axis; chunks run one after another inside this one program
    # (lax.map's own batch_size would vmap ``train`` over members, but ``train`` is already a
    # population program whose op dispatch differs per chunk).
    return jax.lax.map(lambda xs: train(*xs), (params, codes, dispatch, learning_rate, weight_decay))


def _pad_columns(table: np.ndarray, size: int) -> np.ndarray:
    """A dispatch table [3, c] widened to ``size`` columns of invalid rows (member 0, its first edge)."""
    pad = np.repeat(np.array([[0], [table[1, 0]], [0]], np.int32), size - table.shape[1], axis=1)
    return np.concatenate([table, pad], axis=1)


def _chunked_dispatch(codes: np.ndarray, chunk: int, capacity: int | None) -> dict[str, np.ndarray]:
    """Per-chunk dispatch tables stacked [n_chunks, 3, c] with one capacity per key (the largest)."""
    tables = [op_dispatch(codes[i : i + chunk], capacity) for i in range(0, len(codes), chunk)]
    return {key: np.stack([_pad_columns(t[key], max(u[key].shape[1] for u in tables)) for t in tables]) for key in tables[0]}


def train_population(codes, rng: jax.Array, data: PopulationData, steps: int, *, net: CellNet = CellNet(), batch_size: int = 32,
                     learning_rate=1e-2, weight_decay=0.0, params: dict | None = None, capacity: int | None = None,
                     devices: int = 1, chunk: int | None = None) -> dict:
    """Trains P members (``codes`` [P, 6]) for ``steps`` steps in one jit; returns
    ``{"losses": [steps, P], "val_accuracy": [P], "params": ...}``.

    ``learning_rate`` / ``weight_decay``: scalars or [P] arrays (a hyperparameter grid is one
    call). ``params`` defaults to ``init_population(rng, P, net)``. ``capacity``: (member, edge)
    pairs per node and op that get computed (see ``arch.nas_cell.op_dispatch``). ``chunk`` < P:
    the members are trained ``chunk`` at a time by a ``lax.map`` inside the same program (P is
    padded with copies of member 0 to whole chunks), so memory is that of one chunk; a chunk
    estimated not to fit raises :class:`PopulationMemoryError` before compiling. ``devices``
    > 1 splits each chunk's members over that many devices (a ``population`` mesh axis; the
    chunk size must divide).
    """
    codes = np.asarray(codes, np.int32)
    size = len(codes)
    chunk = size if chunk is None else int(chunk)
    if not 1 <= chunk:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunk = min(chunk, size)
    check_chunk_fits(chunk, batch_size=batch_size, val_size=data.val_images.shape[0], image_size=data.val_images.shape[1],
                     channels=net.channels if params is None else params["conv1"].shape[-1], devices=devices)
    init_rng, data_rng = jax.random.split(rng)
    if params is None:
        params = _init_population(init_rng, size, net)
    if devices > 1 and (chunk % devices or devices > jax.device_count()):
        raise ValueError(f"a population chunk of {chunk} does not split over {devices} devices ({jax.device_count()} available)")
    chunked = chunk < size
    per_member = lambda value: jnp.broadcast_to(jnp.asarray(value, jnp.float32), (size,))
    learning_rate, weight_decay = jnp.asarray(learning_rate, jnp.float32), jnp.asarray(weight_decay, jnp.float32)
    if chunked or devices > 1:
        learning_rate, weight_decay = per_member(learning_rate), per_member(weight_decay)
    if chunked:
        n_chunks = -(-size // chunk)
        pad = n_chunks * chunk - size
        fill = lambda x: jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        stack = lambda x: fill(x).reshape((n_chunks, chunk) + x.shape[1:])
        codes_in = np.concatenate([codes, np.repeat(codes[:1], pad, axis=0)])
        dispatch = {key: jnp.asarray(t) for key, t in _chunked_dispatch(codes_in, chunk, capacity).items()}
        params, learning_rate, weight_decay = jax.tree.map(stack, params), stack(learning_rate), stack(weight_decay)
        codes_in = codes_in.reshape(n_chunks, chunk, -1)
    else:
        dispatch = {key: jnp.asarray(table) for key, table in op_dispatch(codes, capacity).items()}
        codes_in = codes
    if devices > 1:
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("population",))
        spec = jax.sharding.PartitionSpec(None, "population") if chunked else jax.sharding.PartitionSpec("population")
        split = jax.sharding.NamedSharding(mesh, spec)  # member m of a chunk lives on device m // (chunk / devices)
        params, learning_rate, weight_decay = jax.device_put((params, learning_rate, weight_decay), split)
    params, losses, accuracy = _train_program(
        params, jnp.asarray(codes_in), dispatch, data_rng, data, learning_rate, weight_decay,
        steps=steps, batch_size=batch_size, chunked=chunked,
    )
    if not accuracy.is_fully_addressable:  # members on other hosts: every process gets every member's results
        from jax.experimental import multihost_utils

        losses, accuracy = multihost_utils.process_allgather((losses, accuracy), tiled=True)
    if chunked:
        unstack = lambda x: x.reshape((-1,) + x.shape[2:])[:size]
        params, accuracy = jax.tree.map(unstack, params), unstack(accuracy)
        losses = jnp.moveaxis(losses, 0, 1).reshape(steps, -1)[:, :size]  # [chunks, steps, k] -> [steps, P]
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

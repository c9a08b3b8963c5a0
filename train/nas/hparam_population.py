"""Score hyperparameter settings of one fixed cell: one vmap-ed population per array shape.

A member of ``arch.search_space.HyperparameterSpace`` is (batch size, width, learning rate, weight
decay) for a fixed NAS-Bench-201 genotype. Learning rate and weight decay are per-member arrays of
``train.nas.population.train_population``, so members that share a batch size and width train as
one population in one call; each (batch size, width) group is one call. Every member of a width
starts from the same initial params (common random numbers: members differ only by their
hyperparameters), and every group sees the same data stream.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from archlab.arch.nas_cell import CellNet, init_population
from archlab.arch.search_space import HyperparameterSpace
from archlab.train.nas.population import PopulationData, train_population
from archlab.train.nas.small_jit import small_jit

_init_population = small_jit(init_population, static_argnums=(1, 2))  # eager init dispatches many small PRNG ops


def shape_groups(space: HyperparameterSpace, codes) -> list[tuple[int, int, np.ndarray]]:
    """``[(batch_size, width, member indices), ...]``, one entry per distinct shape, in order of first appearance."""
    values = space.values(codes)
    keys = list(zip(values["batch_size"].tolist(), values["width"].tolist()))
    groups: dict[tuple[int, int], list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [(batch, width, np.asarray(members)) for (batch, width), members in groups.items()]


def shared_init(rng: jax.Array, width: int, size: int, in_channels: int = 1, num_classes: int = 10) -> dict:
    """``size`` copies of one member's params for cells of ``width`` channels (the same for every call with this rng)."""
    net = CellNet(channels=width, in_channels=in_channels, num_classes=num_classes)
    one = _init_population(jax.random.fold_in(rng, width), 1, net)
    return jax.tree.map(lambda x: jnp.repeat(x, size, axis=0), one)


def train_hyperparameters(codes, rng: jax.Array, data: PopulationData, steps: int, *, space: HyperparameterSpace, genotype,
                          pad_to: int = 1, devices: int = 1) -> dict:
    """Trains the fixed ``genotype [6]`` with each member's hyperparameters (``codes [P, 4]``); one
    ``train_population`` call per (batch size, width), its size padded to a multiple of ``pad_to``
    (copies of its first member, so recurring group sizes reuse one compiled program). A setting
    that repeats is trained once, so no group outgrows ``len(learning_rates) * len(weight_decays)``.

    ``rng`` goes to every call as is (so all groups see the same data stream) and seeds
    :func:`shared_init`. ``devices``: split each call's members over that many devices (must divide
    every padded size, e.g. divide ``pad_to``). Returns ``{"losses": [steps, P], "val_accuracy": [P], "calls": [(batch_size,
    width, padded size), ...]}``.
    """
    codes = np.atleast_2d(np.asarray(codes, np.int32))
    if len(np.unique(codes, axis=0)) < len(codes):  # a repeated setting trains exactly like its first copy: train it once
        unique, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # keep the order of first appearance
        result = train_hyperparameters(unique[order], rng, data, steps, space=space, genotype=genotype, pad_to=pad_to,
                                       devices=devices)
        rows = np.argsort(order)[inverse.reshape(-1)]
        return {"losses": result["losses"][:, rows], "val_accuracy": result["val_accuracy"][rows], "calls": result["calls"]}
    genotype = np.asarray(genotype, np.int32)
    values = space.values(codes)
    in_channels, num_classes = int(data.train_images.shape[-1]), int(data.train_labels.max()) + 1
    losses = np.zeros((steps, len(codes)), np.float32)
    accuracy = np.zeros(len(codes), np.float32)
    calls = []
    for batch_size, width, members in shape_groups(space, codes):
        size = -(-len(members) // pad_to) * pad_to
        rows = np.concatenate([members, np.repeat(members[:1], size - len(members))])
        result = train_population(
            np.repeat(genotype[None], size, axis=0), rng, data, steps,
            net=CellNet(channels=width, in_channels=in_channels, num_classes=num_classes), batch_size=batch_size,
            learning_rate=values["learning_rate"][rows], weight_decay=values["weight_decay"][rows],
            params=shared_init(rng, width, size, in_channels, num_classes), devices=devices)
        losses[:, members] = np.asarray(result["losses"])[:, : len(members)]
        accuracy[members] = np.asarray(result["val_accuracy"])[: len(members)]
        calls.append((batch_size, width, size))
    return {"losses": losses, "val_accuracy": accuracy, "calls": calls}

"""Named mesh, logical-axis rules and the shardings derived from them.

Models name their axes (``batch``, ``embed``, ``heads``, ``mlp``, ``vocab`` ...); the config's
``parallel.mesh`` builds a mesh such as ``data:-1,model:1`` and ``parallel.rules`` maps logical
names onto mesh axes. Params are created already sharded by jitting init with these shardings,
and the train step is ``jax.jit`` with in/out shardings: that is pjit in today's JAX.
"""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class MeshError(ValueError):
    """A mesh spec that does not fit the available devices."""





def parse_mesh_spec(spec: str, num_devices: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``"data:-1,model:2"`` -> (("data", "model"), (n/2, 2)); one -1 means "the rest".

    Without a -1 the mesh may use fewer devices than exist (the first ones), e.g. ``data:1``.
    """
    names, sizes = [], []
    for part in spec.split(","):
        name, sep, size = part.strip().partition(":")
        if not sep or not name:
            raise MeshError(f"bad mesh spec {spec!r}: expected 'axis:size,...' e.g. 'data:-1,model:1'")
        try:
            sizes.append(int(size))
        except ValueError:
            raise MeshError(f"bad mesh spec {spec!r}: size {size!r} of axis {name!r} is not an integer") from None
        names.append(name)
    if len(set(names)) != len(names):
        raise MeshError(f"bad mesh spec {spec!r}: repeated axis name")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"bad mesh spec {spec!r}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(f"mesh {spec!r} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) > num_devices:
        raise MeshError(f"mesh {spec!r} needs {math.prod(sizes)} devices but {num_devices} are available")
    return tuple(names), tuple(sizes)


def make_mesh(spec: str, devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    names, sizes = parse_mesh_spec(spec, len(devices))
    return Mesh(np.array(devices[: math.prod(sizes)]).reshape(sizes), names)


def parse_rules(rules: str, mesh: Mesh) -> tuple[tuple[str, str | None], ...]:
    """``"batch:data,heads:model"`` -> flax logical axis rules, dropping axes the mesh lacks."""
    out = []
    for part in filter(None, (p.strip() for p in rules.split(","))):
        logical, sep, mesh_axis = part.partition(":")
        if not sep:
            raise MeshError(f"bad rule {part!r} in parallel.rules: expected 'logical:mesh_axis'")
        out.append((logical, mesh_axis if mesh_axis in mesh.axis_names else None))
    return tuple(out)


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
    """Mesh + logical rules active while tracing, so activation constraints resolve."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def logical_shardings(boxed_tree, mesh: Mesh, rules):
    """NamedShardings for a pytree whose leaves are boxed with logical names (others replicated)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over whatever ``batch`` maps to; the rest replicated."""
    batch_axis = dict(rules).get("batch")
    return NamedSharding(mesh, PartitionSpec(batch_axis, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Places this process's rows of a global batch onto the mesh."""
    return jax.make_array_from_process_local_data(sharding, batch)

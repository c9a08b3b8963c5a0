"""Where each parameter lives: its PartitionSpec, the shard each device holds, and the bytes per device.

``train.parallel.sharding_report`` prints the largest params of one layout at start-up; these
tables are for looking at a layout in full (a notebook, a debugging session): every param of a
placed state, or every param's PartitionSpec under several layouts side by side.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from archlab.train.tree_paths import param_path_name


@dataclasses.dataclass(frozen=True)
class ParamPlacement:
    """One placed array: ``shard_shape`` is what each device holds, ``copies`` how many devices hold each shard."""

    name: str
    shape: tuple[int, ...]
    spec: str
    shard_shape: tuple[int, ...]
    shards: int
    copies: int
    bytes_per_device: int
    bytes_whole: int


def param_placements(params) -> list[ParamPlacement]:
    """One row per leaf of a tree of placed ``jax.Array``s, in tree order (read off the arrays themselves)."""
    rows = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        shards = leaf.addressable_shards
        shard_shape = tuple(int(n) for n in shards[0].data.shape)
        distinct = len({tuple((s.start, s.stop) for s in shard.index) for shard in shards})
        spec = getattr(leaf.sharding, "spec", None)
        rows.append(ParamPlacement(
            name=param_path_name(path), shape=tuple(int(n) for n in leaf.shape), spec=str(spec) if spec is not None else str(leaf.sharding),
            shard_shape=shard_shape, shards=distinct, copies=len(shards) // distinct,
            bytes_per_device=math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize,
            bytes_whole=math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize,
        ))
    return rows


def placement_table(rows: list[ParamPlacement]) -> list[str]:
    """A markdown table of ``param_placements`` with a total row (whole model vs one device's share)."""
    lines = ["| param | shape | PartitionSpec | shard per device | shards x copies | KiB per device |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.shape} | {r.spec} | {r.shard_shape} | {r.shards} x {r.copies} | {r.bytes_per_device / 1024:,.1f} |")
    whole = sum(r.bytes_whole for r in rows)
    per_device = sum(r.bytes_per_device for r in rows)
    lines.append(f"| **total** | {whole / 1024:,.1f} KiB whole | | | | **{per_device / 1024:,.1f}** |")
    return lines


def spec_table(shardings_by_layout: dict[str, object]) -> list[str]:
    """A markdown table, one row per param and one column per layout: the PartitionSpec of each.

    ``shardings_by_layout`` maps a column title to a tree of ``NamedSharding`` (e.g.
    ``Run(config).state_shardings.params``); the trees must have the same structure.
    """
    titles = list(shardings_by_layout)
    columns = [jax.tree_util.tree_leaves_with_path(shardings_by_layout[t]) for t in titles]
    if len({len(c) for c in columns}) > 1:
        raise ValueError("the layouts' param trees differ in size; compare layouts of the same model")
    lines = ["| param | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    for row in zip(*columns):
        name = param_path_name(row[0][0])
        lines.append(f"| {name} | " + " | ".join(_spec_text(sharding.spec) for _, sharding in row) + " |")
    return lines


def _spec_text(spec) -> str:
    """``P('fsdp', None)`` -> ``fsdp, -``; a fully replicated spec -> ``replicated``."""
    entries = tuple(spec)
    if all(e is None for e in entries):
        return "replicated"
    return ", ".join("-" if e is None else e if isinstance(e, str) else "+".join(e) for e in entries)

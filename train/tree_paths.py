"""Names of pytree leaves: ``layer_0/attn/qkv`` for a param's tree path, the one spelling used in
start-up reports, placement tables, checkpoint mismatches, transfer checks and int8 exports."""

from __future__ import annotations

import jax


def param_path_name(path) -> str:
    """A param's tree path as ``layer_0/attn/qkv``: the name in start-up reports and placement tables."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def shapes_by_name(tree) -> dict[str, tuple]:
    """``{leaf name: shape}`` of every leaf that has a shape."""
    return {param_path_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}

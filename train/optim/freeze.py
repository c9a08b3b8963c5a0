"""``train.freeze_backbone``: only the classifier's ``head`` module trains.

Every param outside ``head`` is routed to ``optax.set_to_zero`` inside one ``optax.multi_transform``
with the usual optimizer, so the backbone stays bitwise fixed (weight decay included) while the head
trains; BatchNorm statistics still follow the new data (train/transfer.py starts such runs).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import optax

HEAD = "head"


def is_head(name: str) -> bool:
    """Whether a param path name (``head/Dense_0/kernel``) is in the head."""
    return name.split("/")[0] == HEAD


def has_head(params) -> bool:
    return HEAD in params


def head_labels(params):
    """``"head"`` for the head's leaves, ``"backbone"`` for the rest (multi_transform labels).

    A boxed param (logical axis names) gets one label for its box, so the optimizer state holds
    ``MaskedNode`` in place of whole boxes and its sharding specs still line up with its shapes."""
    boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)
    return {name: jax.tree.map(lambda _: HEAD if name == HEAD else "backbone", sub, is_leaf=boxed) for name, sub in params.items()}


def freeze_backbone(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` on the head only; zero updates (so bitwise-unchanged params) everywhere else."""
    return optax.multi_transform({HEAD: tx, "backbone": optax.set_to_zero()}, head_labels)

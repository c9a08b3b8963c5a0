"""NAS search spaces as integer codes: the NAS-Bench-201 cell, a masked dense net, hyperparameters.

A member of a population is a row of int32 decision indices, so a population is one ``[P, L]``
array that the vmap-ed trainer, the strategies and history files all share. Every space offers
``num_choices`` (choices per decision) and ``describe(code)``. Enumeration (code <-> index, mixed
radix) is generic over ``num_choices`` and lives here, so the cell's base-5 index is the same
function; sampling and mutation are the search strategies' own (``train.nas.space_ops``). Pure numpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# ----------------------------------------------------------------------------- enumeration


def codes_from_indices(indices, num_choices: Sequence[int]) -> np.ndarray:
    """Mixed-radix decoding: indices ``[...]`` -> codes ``[..., D]`` int32, first decision slowest
    (lexicographic order)."""
    indices = np.asarray(indices, np.int64)
    codes = np.zeros(indices.shape + (len(num_choices),), np.int32)
    for d in reversed(range(len(num_choices))):
        codes[..., d] = indices % num_choices[d]
        indices = indices // num_choices[d]
    return codes


def indices_from_codes(codes, num_choices: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`codes_from_indices`: codes ``[..., D]`` -> int64 ``[...]``."""
    codes = np.asarray(codes, np.int64)
    index = np.zeros(codes.shape[:-1], np.int64)
    for d, k in enumerate(num_choices):
        index = index * k + codes[..., d]
    return index


def all_codes(num_choices: Sequence[int]) -> np.ndarray:
    """Every code of the space ``[prod(num_choices), D]`` int32 once, row ``i`` being index ``i``."""
    return codes_from_indices(np.arange(math.prod(int(k) for k in num_choices)), num_choices)


# ----------------------------------------------------------------------------- NAS-Bench-201 cell

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to_node, from_node), NAS-Bench-201 string order
NUM_NODES = 4
NUM_EDGES = len(EDGES)
NUM_OPS = len(OPS)
NUM_ARCHITECTURES = NUM_OPS**NUM_EDGES
CELL_FORMAT = "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
CELL_CHOICES = (NUM_OPS,) * NUM_EDGES  # the cell as a space: one op per edge
_VALID_OPS = "valid ops: " + ", ".join(OPS)


class GenotypeError(ValueError):
    """A cell genotype (string or code) that is not a valid NAS-Bench-201 cell."""


def _edge_name(edge: int) -> str:
    to_node, from_node = EDGES[edge]
    return f"edge {edge + 1} (node {to_node} <- node {from_node})"  # numbered from 1, left to right in the string


def check_choices(codes, num_choices, what: str) -> np.ndarray:
    """Returns ``codes`` as int32 after checking the last axis has one in-range index per decision."""
    codes = np.asarray(codes)
    sizes = np.asarray(num_choices)
    if codes.ndim == 0 or codes.shape[-1] != len(sizes) or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{what} codes must be integers of shape [..., {len(sizes)}], got {codes.dtype} {codes.shape}")
    bad = (codes < 0) | (codes >= sizes)
    if bad.any():
        position = int(np.argwhere(bad)[0][-1])
        raise ValueError(f"{what} decision {position} must be in [0, {sizes[position]}), got {codes[bad][0]}")
    return codes.astype(np.int32)


def _check_genotype(code) -> np.ndarray:
    try:
        return check_choices(code, (NUM_OPS,) * NUM_EDGES, "cell")
    except ValueError as error:
        raise GenotypeError(f"{error}; {_VALID_OPS}") from None


def genotype_to_string(code) -> str:
    """Formats one genotype ``[6]`` as the NAS-Bench-201 string, e.g. ``|nor_conv_3x3~0|+|...|``."""
    code = _check_genotype(code)
    if code.ndim != 1:
        raise GenotypeError(f"expected one genotype of shape [{NUM_EDGES}], got shape {code.shape}")
    groups = []
    for to_node in range(1, NUM_NODES):
        tokens = [f"{OPS[code[e]]}~{f}" for e, (t, f) in enumerate(EDGES) if t == to_node]
        groups.append("|" + "|".join(tokens) + "|")
    return "+".join(groups)


def genotype_from_string(text: str) -> np.ndarray:
    """Parses a NAS-Bench-201 cell string into its code ``[6]`` int32; GenotypeError names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise GenotypeError(f"empty genotype string; expected {CELL_FORMAT}; {_VALID_OPS}")
    groups = text.strip().split("+")
    if len(groups) != NUM_NODES - 1:
        raise GenotypeError(f"genotype has {len(groups)} node groups separated by '+', expected {NUM_NODES - 1} "
                            f"({CELL_FORMAT}); {_VALID_OPS}")
    code = np.zeros(NUM_EDGES, np.int32)
    edge = 0
    for to_node, group in enumerate(groups, start=1):
        expected = "|" + "|".join(f"op~{i}" for i in range(to_node)) + "|"
        if len(group) < 2 or group[0] != "|" or group[-1] != "|":
            raise GenotypeError(f"node {to_node}: expected {expected}, got {group!r}; {_VALID_OPS}")
        tokens = group[1:-1].split("|")
        if len(tokens) != to_node:
            raise GenotypeError(f"node {to_node} has {len(tokens)} input edges, expected {to_node} "
                                f"({expected}); {_VALID_OPS}")
        for from_node, token in enumerate(tokens):
            op, tilde, index = token.partition("~")
            if not tilde:
                raise GenotypeError(f"{_edge_name(edge)}: expected 'op~{from_node}', got {token!r}; {_VALID_OPS}")
            if index != str(from_node):
                raise GenotypeError(f"{_edge_name(edge)}: wrong input index '~{index}', expected '~{from_node}' "
                                    f"in {token!r}; {_VALID_OPS}")
            if op not in OPS:
                raise GenotypeError(f"{_edge_name(edge)}: unknown op {op!r}; {_VALID_OPS}")
            code[edge] = OPS.index(op)
            edge += 1
    return code


def genotype_to_index(codes) -> np.ndarray | int:
    """Base-5 index of genotypes ``[..., 6]``, edge 0 the most significant digit (so index order = code order)."""
    codes = _check_genotype(codes)
    index = indices_from_codes(codes, CELL_CHOICES)
    return int(index) if codes.ndim == 1 else index


def index_to_genotype(index) -> np.ndarray:
    """Inverse of :func:`genotype_to_index`: an int (or int array ``[...]``) -> codes ``[..., 6]`` int32."""
    index = np.asarray(index, np.int64)
    if ((index < 0) | (index >= NUM_ARCHITECTURES)).any():
        raise GenotypeError(f"architecture index must be in [0, {NUM_ARCHITECTURES}), got {index}")
    return codes_from_indices(index, CELL_CHOICES)


def all_genotypes() -> np.ndarray:
    """Every cell ``[15625, 6]`` int32, row ``i`` being ``index_to_genotype(i)``."""
    return all_codes(CELL_CHOICES)


def is_disconnected(codes) -> bool | np.ndarray:
    """True where no path of non-``none`` edges leads from node 0 to node 3 (the cell outputs zeros).

    Takes one genotype ``[6]`` (returns a bool) or a population ``[P, 6]`` (returns bool ``[P]``).
    """
    codes = _check_genotype(codes)
    live = codes != OPS.index("none")
    reached = [np.ones(codes.shape[:-1], bool)]
    for to_node in range(1, NUM_NODES):
        reached.append(np.zeros(codes.shape[:-1], bool))
        for edge, (t, f) in enumerate(EDGES):
            if t == to_node:
                reached[to_node] |= reached[f] & live[..., edge]
    return bool(~reached[-1]) if codes.ndim == 1 else ~reached[-1]


def op_frequencies(codes) -> np.ndarray:
    """Fraction of a population ``[P, 6]`` using each op on each edge: ``[6, 5]`` float32, rows sum to 1."""
    codes = _check_genotype(codes).reshape(-1, NUM_EDGES)
    if len(codes) == 0:
        raise ValueError("op_frequencies needs at least one genotype")
    return np.eye(NUM_OPS, dtype=np.float32)[codes].mean(axis=0)


@dataclasses.dataclass(frozen=True)
class CellSpace:
    """The NAS-Bench-201 cell behind the same interface as the other spaces (for generic strategies)."""

    @property
    def num_choices(self) -> tuple[int, ...]:
        return CELL_CHOICES

    def describe(self, code) -> str:
        return genotype_to_string(code)


# ----------------------------------------------------------------------------- dense network


@dataclasses.dataclass(frozen=True)
class DenseSpace:
    """Depth 1..max_depth, then a width and an activation per layer.

    Code layout ``[depth_index, width_0, activation_0, width_1, activation_1, ...]`` (length
    ``1 + 2 * max_depth``); depth index ``d`` means ``d + 1`` layers. Choices of layers beyond the
    depth are kept (inactive genes), so every member has the same shape and mutation may be neutral.
    """

    max_depth: int = 4
    widths: tuple[int, ...] = (16, 32, 64, 128)
    activations: tuple[str, ...] = ("relu", "gelu", "tanh", "swish")

    def __post_init__(self):
        if self.max_depth < 1 or not self.widths or min(self.widths) < 1 or not self.activations:
            raise ValueError(f"DenseSpace needs max_depth >= 1, positive widths and activations, got {self}")

    @property
    def num_choices(self) -> tuple[int, ...]:
        return (self.max_depth,) + (len(self.widths), len(self.activations)) * self.max_depth

    @property
    def max_width(self) -> int:
        return max(self.widths)

    def to_masks(self, codes) -> dict[str, np.ndarray]:
        """Shape-uniform view of a population ``[P, L]`` for a padded ``max_depth x max_width`` network.

        ``layer_active [P, D]`` float32: 1 for layers below the depth. ``unit_active [P, D, W]`` float32:
        1 for the first ``width`` units of active layers, all 0 on inactive layers. ``activation [P, D]``
        int32 indexes ``self.activations``; ``depth [P]`` and ``width [P, D]`` int32 are the plain values.
        """
        codes = check_choices(np.atleast_2d(codes), self.num_choices, "dense")
        depth = codes[:, 0] + 1
        width = np.asarray(self.widths, np.int32)[codes[:, 1::2]]
        layer_active = (np.arange(self.max_depth) < depth[:, None]).astype(np.float32)
        units = np.arange(self.max_width) < width[..., None]
        unit_active = units.astype(np.float32) * layer_active[..., None]
        return {"layer_active": layer_active, "unit_active": unit_active, "activation": codes[:, 2::2],
                "depth": depth.astype(np.int32), "width": width}

    def describe(self, code) -> str:
        """One member in words, e.g. ``depth 2: 64 relu, 32 tanh``."""
        code = check_choices(code, self.num_choices, "dense").reshape(-1)
        depth = int(code[0]) + 1
        layers = [f"{self.widths[code[1 + 2 * i]]} {self.activations[code[2 + 2 * i]]}" for i in range(depth)]
        return f"depth {depth}: " + ", ".join(layers)


# ----------------------------------------------------------------------------- hyperparameters


@dataclasses.dataclass(frozen=True)
class HyperparameterSpace:
    """Training hyperparameters of one fixed architecture: code ``[batch_index, width_index, lr_index, wd_index]``.

    Batch size and width change array shapes, learning rate and weight decay do not, so the shape
    decisions come first: a lexicographic grid then visits all (lr, wd) pairs of one (batch, width)
    in a row, and the members that share a shape train as one vmap-ed population with per-member
    values from :meth:`values`.
    """

    learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    weight_decays: tuple[float, ...] = (0.0, 1e-1)  # decoupled (AdamW): the step subtracts lr * wd * param
    batch_sizes: tuple[int, ...] = (32, 64)
    widths: tuple[int, ...] = (8, 16)

    def __post_init__(self):
        for name, low, closed in (("learning_rates", 0, False), ("weight_decays", 0, True), ("batch_sizes", 1, True),
                                  ("widths", 1, True)):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"{name} must list at least one value (the grid would be empty)")
            bad = [v for v in values if not (v >= low if closed else v > low)]
            if bad:
                raise ValueError(f"{name} must all be {'>=' if closed else '>'} {low}, got {bad[0]}")

    @property
    def num_choices(self) -> tuple[int, ...]:
        return (len(self.batch_sizes), len(self.widths), len(self.learning_rates), len(self.weight_decays))

    def grid(self) -> np.ndarray:
        """Every code ``[G, 4]`` int32 once, in lexicographic order (batch size slowest, weight decay fastest)."""
        return all_codes(self.num_choices)

    def values(self, codes) -> dict[str, np.ndarray]:
        """Per-member ``batch_size``, ``width`` (int32 ``[P]``), ``learning_rate`` and ``weight_decay`` (float32 ``[P]``)."""
        codes = check_choices(np.atleast_2d(codes), self.num_choices, "hyperparameter")
        return {"batch_size": np.asarray(self.batch_sizes, np.int32)[codes[:, 0]],
                "width": np.asarray(self.widths, np.int32)[codes[:, 1]],
                "learning_rate": np.asarray(self.learning_rates, np.float32)[codes[:, 2]],
                "weight_decay": np.asarray(self.weight_decays, np.float32)[codes[:, 3]]}

    def describe(self, code) -> str:
        """One member in words, e.g. ``batch 32, width 16, lr 0.01, wd 0.01``."""
        v = {name: value[0] for name, value in self.values(code).items()}
        return f"batch {v['batch_size']}, width {v['width']}, lr {v['learning_rate']:g}, wd {v['weight_decay']:g}"

"""The NAS-Bench-201 cell network, two ways: one member with only its chosen ops, and a whole
population of *different* cells as one array program.

Network: a 3x3 stem conv (``in_channels`` -> C), one cell of 4 nodes / 6 edges at C channels,
average pooling to a 4x4 grid and a linear classifier (a single global average learnt far too
slowly for a 50-step search budget). Ops on an edge (NAS-Bench-201 names): ``none``
(zero), ``skip_connect`` (identity), ``nor_conv_1x1`` / ``nor_conv_3x3`` (ReLU then conv; no
BatchNorm, so a population needs no per-member batch statistics), ``avg_pool_3x3`` (stride 1,
same padding, padding not counted). Node j is the sum of its incoming edges; node 3 is the output.

Params of one member: ``stem [9*in, C]``, ``stem_bias [C]``, ``conv3 [6, 9C, C]`` (3x3 kernels as
im2col matrices, rows ordered (dy, dx, channel)), ``conv1 [6, C, C]``, ``head [16C, classes]``,
``head_bias [classes]``. An edge whose op is not a conv leaves its kernel unused (zero gradient).

``member_logits`` (``lax.conv``, only the chosen ops; the genotype is static) is what a user would
write for one architecture; ``population_logits`` computes every member at once with batched
matmuls over members: im2col patches built from slices of the padded input (not
``conv_general_dilated_patches``, ~40x slower here), and per target node the 1x1 convs, 3x3 convs
and pools computed only for the (member, edge) pairs that chose them (``op_dispatch``: static
capacities, gathered inputs, one batched matmul, a scatter-add back), so the population does not
pay for all five ops on every edge. :class:`NASCellNet` wraps ``member_logits`` as a Linen module
(same param names and shapes), so a found cell trains fully through ``--model=nas_cell``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archlab.arch.search_space import EDGES, NUM_EDGES, OPS, GenotypeError, genotype_from_string

NONE, SKIP, CONV1, CONV3, POOL = range(5)
TAPS = tuple((dy, dx) for dy in range(3) for dx in range(3))


@dataclasses.dataclass(frozen=True)
class CellNet:
    channels: int = 16
    in_channels: int = 1
    num_classes: int = 10


def init_member(rng: jax.Array, net: CellNet) -> dict:
    """He-normal kernels, zero biases."""
    c, k = net.channels, jax.random.split(rng, 4)
    he = lambda key, shape, fan_in: jax.random.normal(key, shape, jnp.float32) * np.sqrt(2.0 / fan_in)
    return {
        "stem": he(k[0], (9 * net.in_channels, c), 9 * net.in_channels),
        "stem_bias": jnp.zeros((c,), jnp.float32),
        "conv3": he(k[1], (NUM_EDGES, 9 * c, c), 9 * c),
        "conv1": he(k[2], (NUM_EDGES, c, c), c),
        "head": he(k[3], (HEAD_GRID * HEAD_GRID * c, net.num_classes), HEAD_GRID * HEAD_GRID * c) * 0.5,
        "head_bias": jnp.zeros((net.num_classes,), jnp.float32),
    }


def init_population(rng: jax.Array, size: int, net: CellNet) -> dict:
    """Params with a leading population axis; member m equals ``init_member(split(rng, size)[m])``."""
    return jax.vmap(lambda key: init_member(key, net))(jax.random.split(rng, size))


# ------------------------------------------------------------------------------------ shared ops


def _pool_divisor(height: int, width: int) -> np.ndarray:
    """How many real pixels each 3x3 window covers (padding not counted), [H, W, 1]."""
    ones = np.pad(np.ones((height, width), np.float32), 1)
    return sum(ones[dy : dy + height, dx : dx + width] for dy, dx in TAPS)[..., None]


def avg_pool_3x3(x: jax.Array) -> jax.Array:
    """Stride-1 3x3 mean over [..., H, W, C] with same padding; padding not counted.

    One ``reduce_window`` sum divided by a constant count (measured here: ~2x faster in a
    population step than summing nine shifted slices).
    """
    h, w = x.shape[-3:-1]
    lead = x.ndim - 3
    window = (1,) * lead + (3, 3, 1)
    pad = ((0, 0),) * lead + ((1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1,) * x.ndim, pad)
    return total / _pool_divisor(h, w).astype(x.dtype)


def patches_3x3(x: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., H, W, 9C] from 9 shifted slices of the zero-padded input."""
    h, w = x.shape[-3:-1]
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    padded = jnp.pad(x, pad)
    return jnp.concatenate([padded[..., dy : dy + h, dx : dx + w, :] for dy, dx in TAPS], axis=-1)


HEAD_GRID = 4  # the head sees the output node average-pooled to a 4x4 grid, not one global average


def _grid_pool(node3: jax.Array) -> jax.Array:
    """[..., H, W, C] -> [..., 16*C]: means over a 4x4 grid of blocks (H, W divisible by 4)."""
    *lead, h, w, c = node3.shape
    g = HEAD_GRID
    blocks = node3.reshape(*lead, g, h // g, g, w // g, c).mean(axis=(-4, -2))
    return blocks.reshape(*lead, g * g * c)


def _head(params, node3):
    return _grid_pool(node3) @ params["head"] + params["head_bias"]


# ------------------------------------------------------------------------------- one member


def _conv(x, matrix, size: int):
    kernel = matrix.reshape(size, size, x.shape[-1], matrix.shape[-1])  # rows (dy, dx, c) -> HWIO
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def member_logits(params: dict, genotype: tuple[int, ...], images: jax.Array) -> jax.Array:
    """Logits of one architecture, computing only its chosen ops (``genotype`` is static).

    A node nothing reaches stays out of the program (``None``) instead of being an array of zeros:
    XLA would otherwise constant-fold a pool of zeros, which took 25 s per pool here.
    """
    nodes = [_conv(images, params["stem"], 3) + params["stem_bias"]]
    for j in range(1, 4):
        total = None
        for e, (to_node, from_node) in enumerate(EDGES):
            if to_node != j or nodes[from_node] is None or genotype[e] == NONE:
                continue
            x, op = nodes[from_node], genotype[e]
            if op == SKIP:
                term = x
            elif op == POOL:
                term = avg_pool_3x3(x)
            elif op == CONV1:
                term = _conv(jax.nn.relu(x), params["conv1"][e], 1)
            else:
                term = _conv(jax.nn.relu(x), params["conv3"][e], 3)
            total = term if total is None else total + term
        nodes.append(total)
    if nodes[3] is None:  # the output node is zero: only the head's bias is left
        return jnp.broadcast_to(params["head_bias"], images.shape[:-3] + params["head_bias"].shape)
    return _head(params, nodes[3])


# ------------------------------------------------------------------------------- a population

DISPATCHED = (CONV1, CONV3, POOL)  # ops computed only for the members that chose them
_OP_NAMES = {CONV1: "conv1", CONV3: "conv3", POOL: "pool"}
FROM_NODE = np.array([from_node for _, from_node in EDGES], np.int32)


def op_dispatch(codes: np.ndarray, capacity: int | None = None) -> dict[str, np.ndarray]:
    """For each target node j (1..3) and dispatched op, the (member, edge) pairs that chose it.

    Returns ``{"<j>/<op>": int32 [3, capacity_j]}`` with rows (member, edge, valid), op in conv1,
    conv3, pool. A row past the real pairs repeats the first edge into j for member 0 with valid 0.
    ``capacity`` None: the pairs needed rounded up to a multiple of 4 and at most j*P (so a search
    compiles a handful of shapes, not one per population); an int: that capacity everywhere
    (capped at j*P), and a ValueError if some node needs more.
    """
    codes = np.asarray(codes)
    population, out = len(codes), {}
    for j in range(1, 4):
        edges_in = [e for e, (to_node, _) in enumerate(EDGES) if to_node == j]
        most = j * population
        for op in DISPATCHED:
            pairs = [(m, e) for e in edges_in for m in np.flatnonzero(codes[:, e] == op)]
            if capacity is None:
                size = min(most, max(4, -(-len(pairs) // 4) * 4))
            else:
                size = min(most, capacity)
                if len(pairs) > size:
                    raise ValueError(f"{len(pairs)} edges into node {j} use {OPS[op]} but capacity is {size}")
            table = np.zeros((3, size), np.int32)
            table[1, :] = edges_in[0]
            for q, (m, e) in enumerate(pairs):
                table[:, q] = (m, e, 1)
            out[f"{j}/{_OP_NAMES[op]}"] = table
    return out


def _dispatched_op(op: int, params: dict, chosen: jax.Array, member: jax.Array, edge: jax.Array) -> jax.Array:
    if op == POOL:
        return avg_pool_3x3(chosen)
    if op == CONV1:
        return jnp.einsum("qbhwc,qcd->qbhwd", jax.nn.relu(chosen), params["conv1"][member, edge])
    return jnp.einsum("qbhwk,qkd->qbhwd", patches_3x3(jax.nn.relu(chosen)), params["conv3"][member, edge])


def population_logits(params: dict, codes: jax.Array, dispatch: dict, images: jax.Array) -> jax.Array:
    """Logits [P, B, classes] of P different cells on the same images [B, H, W, in].

    ``codes`` [P, 6] select each member's ops; ``dispatch`` = ``op_dispatch(codes)`` (as arrays).
    Skip connections are masked adds; convs and pools run only on the gathered inputs of the
    (member, edge) pairs that chose them (one batched matmul per node and op) and are added back
    to their members' nodes.
    """
    population = codes.shape[0]
    stem = patches_3x3(images)  # shared by every member: [B, H, W, 9*in]
    nodes = [jnp.einsum("bhwk,pkc->pbhwc", stem, params["stem"]) + params["stem_bias"][:, None, None, None, :]]
    for j in range(1, 4):
        total = jnp.zeros_like(nodes[0])
        for e, (to_node, from_node) in enumerate(EDGES):
            if to_node == j:
                total = total + (codes[:, e] == SKIP).astype(total.dtype)[:, None, None, None, None] * nodes[from_node]
        sources = jnp.concatenate(nodes, axis=0) if j > 1 else nodes[0]  # [j*P, B, H, W, C], row = from_node*P + member
        for op in DISPATCHED:
            member, edge, valid = dispatch[f"{j}/{_OP_NAMES[op]}"]
            chosen = sources[jnp.asarray(FROM_NODE)[edge] * population + member]
            out = _dispatched_op(op, params, chosen, member, edge)
            total = total.at[member].add(out * valid.astype(out.dtype)[:, None, None, None, None])
        nodes.append(total)
    pooled = _grid_pool(nodes[3])  # [P, B, 16C]
    return jnp.einsum("pbc,pck->pbk", pooled, params["head"]) + params["head_bias"][:, None, :]


# ------------------------------------------------------------------------------- as a Linen model

PARAM_NAMES = ("stem", "stem_bias", "conv3", "conv1", "head", "head_bias")


class NASCellNet(nn.Module):
    """One NAS-Bench-201 cell network (``genotype`` as its string) for the normal training path.

    Its params are named and shaped exactly as :func:`init_member`'s and its output is
    :func:`member_logits`, so a cell found by the population search loads into it unchanged:
    ``NASCellNet(g).apply({"params": member_params}, images)``. Images must have H and W divisible
    by 4 (the head's grid). No dropout or BatchNorm, so ``deterministic`` changes nothing.
    """

    genotype: str
    channels: int
    num_classes: int

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        problems = []
        try:
            genotype_from_string(model.genotype)
        except GenotypeError as e:
            problems.append(f"bad model.genotype: {e}")
        if model.channels < 1:
            problems.append("model.channels must be >= 1")
        if data.image_size % 4:
            problems.append(f"data.image_size must be divisible by 4 for this model, whose head pools to a 4x4 grid (got {data.image_size})")
        return problems

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        del deterministic
        height, width = x.shape[-3:-1]
        if height % HEAD_GRID or width % HEAD_GRID:
            raise ValueError(f"NASCellNet needs image height and width divisible by {HEAD_GRID}, got {height}x{width}")
        codes = tuple(int(op) for op in genotype_from_string(self.genotype))
        net = CellNet(channels=self.channels, in_channels=x.shape[-1], num_classes=self.num_classes)
        params = {name: self.param(name, lambda key, name=name: init_member(key, net)[name]) for name in PARAM_NAMES}
        return member_logits(params, codes, x.astype(jnp.float32))

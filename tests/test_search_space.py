"""NAS search spaces: NAS-Bench-201 genotype strings and indices, mutation, connectivity, masks, hyperparameters."""

import jax
import numpy as np
import pytest

from archlab.arch import search_space as ss
from archlab.arch.search_space import DenseSpace, GenotypeError, HyperparameterSpace
from archlab.train.nas.small_jit import small_jit
from archlab.train.nas.space_ops import mutate, random_codes


def sample(num_choices, n, seed):
    """Codes from the strategies' sampler (the one implementation; the spaces only describe codes)."""
    return np.asarray(random_codes(jax.random.PRNGKey(seed), tuple(num_choices), n))


def mutate_each(codes, num_choices, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(codes))
    return np.asarray(small_jit(jax.vmap(lambda k, c: mutate(k, c, tuple(num_choices))))(keys, np.asarray(codes, np.int32)))

VALID_OPS = "valid ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3"
NB201_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def test_every_genotype_round_trips_through_string_and_index():
    codes = ss.all_genotypes()
    assert codes.shape == (ss.NUM_ARCHITECTURES, 6) == (15625, 6) and codes.dtype == np.int32
    assert len(np.unique(codes, axis=0)) == 15625
    strings = [ss.genotype_to_string(code) for code in codes]
    assert len(set(strings)) == 15625
    parsed = np.stack([ss.genotype_from_string(text) for text in strings])
    np.testing.assert_array_equal(parsed, codes)
    indices = ss.genotype_to_index(codes)
    np.testing.assert_array_equal(indices, np.arange(15625))
    np.testing.assert_array_equal(ss.index_to_genotype(indices), codes)
    assert ss.genotype_to_index(codes[1234]) == 1234 and isinstance(ss.genotype_to_index(codes[1234]), int)


def test_index_puts_edge_zero_most_significant():
    assert ss.genotype_to_index([0, 0, 0, 0, 0, 1]) == 1
    assert ss.genotype_to_index([1, 0, 0, 0, 0, 0]) == 5**5
    np.testing.assert_array_equal(ss.index_to_genotype(5**6 - 1), [4] * 6)
    with pytest.raises(GenotypeError):
        ss.index_to_genotype(5**6)


def test_real_nas_bench_201_string_parses_to_expected_ops():
    code = ss.genotype_from_string(NB201_EXAMPLE)
    # edges (1,0) (2,0) (2,1) (3,0) (3,1) (3,2)
    np.testing.assert_array_equal(code, [3, 3, 4, 1, 3, 1])
    assert code.dtype == np.int32
    assert ss.genotype_to_string(code) == NB201_EXAMPLE
    assert ss.genotype_from_string("  " + NB201_EXAMPLE + "\n").tolist() == code.tolist()


@pytest.mark.parametrize("text, names", [
    (NB201_EXAMPLE.replace("avg_pool_3x3~1", "conv9x9~1"), ["edge 3 (node 2 <- node 1)", "unknown op 'conv9x9'"]),
    (NB201_EXAMPLE.replace("skip_connect~2", "skip_connect~5"), ["edge 6 (node 3 <- node 2)", "'~5'", "'~2'"]),
    (NB201_EXAMPLE.replace("nor_conv_3x3~0|+", "nor_conv_3x3|+", 1), ["edge 1 (node 1 <- node 0)", "'op~0'"]),
    ("|none~0|+|none~0|none~1|", ["2 node groups", "expected 3"]),
    ("|none~0|+|none~0|+|none~0|none~1|none~2|", ["node 2 has 1 input edges, expected 2"]),
    ("|none~0|+none~0|none~1|+|none~0|none~1|none~2|", ["node 2: expected |op~0|op~1|"]),
    ("", ["empty genotype string"]),
    ("   ", ["empty genotype string"]),
])
def test_malformed_strings_name_the_bad_part_and_list_valid_ops(text, names):
    with pytest.raises(GenotypeError) as caught:
        ss.genotype_from_string(text)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in message and VALID_OPS in message
    for name in names:
        assert name in message, message


def test_bad_codes_are_rejected():
    for code in ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5], [0, 0, -1, 0, 0, 0], [0.0] * 6):
        with pytest.raises(GenotypeError, match="valid ops"):
            ss.genotype_to_string(code)


def test_random_cells_are_deterministic_and_cover_ops():
    first, again = sample(ss.CellSpace().num_choices, 500, 0), sample(ss.CellSpace().num_choices, 500, 0)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (500, 6) and first.dtype == np.int32
    assert set(np.unique(first)) == set(range(5))


def test_cell_mutation_changes_exactly_one_edge_to_a_different_op():
    parents = sample(ss.CellSpace().num_choices, 5000, 1)
    children = mutate_each(parents, ss.CellSpace().num_choices, 2)
    changed = children != parents
    assert children.dtype == np.int32 and (changed.sum(axis=1) == 1).all()
    assert set(np.flatnonzero(changed.any(axis=0))) == set(range(6))  # every edge gets picked
    for edge in range(6):
        assert set(children[changed[:, edge], edge]) == set(range(5))  # every op gets chosen as a replacement
    code = ss.genotype_from_string(NB201_EXAMPLE)
    neighbours = mutate_each(np.repeat(code[None], 300, axis=0), ss.CellSpace().num_choices, 3)
    assert len({tuple(c) for c in neighbours}) == 6 * 4  # all single-edge neighbours reached


def _cell(**ops_by_edge):
    """Code from ops named per edge, e.g. e10='skip_connect' for edge (1, 0); unnamed edges are 'none'."""
    code = np.zeros(6, np.int32)
    for name, op in ops_by_edge.items():
        code[ss.EDGES.index((int(name[1]), int(name[2])))] = ss.OPS.index(op)
    return code


def test_is_disconnected_on_hand_made_cells():
    assert ss.is_disconnected(_cell()) is True
    assert ss.is_disconnected(_cell(e30="skip_connect")) is False
    assert ss.is_disconnected(_cell(e10="nor_conv_3x3", e31="avg_pool_3x3")) is False
    assert ss.is_disconnected(_cell(e21="nor_conv_1x1")) is True
    assert ss.is_disconnected(_cell(e10="skip_connect", e21="skip_connect", e32="skip_connect")) is False
    assert ss.is_disconnected(_cell(e10="skip_connect", e20="nor_conv_3x3", e21="skip_connect")) is True


def test_is_disconnected_matches_path_enumeration_on_all_cells():
    codes = ss.all_genotypes()
    live = codes != 0
    edge = {pair: live[:, i] for i, pair in enumerate(ss.EDGES)}
    connected = (edge[3, 0] | (edge[1, 0] & edge[3, 1]) | (edge[2, 0] & edge[3, 2])
                 | (edge[1, 0] & edge[2, 1] & edge[3, 2]))
    np.testing.assert_array_equal(ss.is_disconnected(codes), ~connected)


def test_op_frequencies_are_per_edge_fractions():
    codes = np.array([[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 4, 1], [0, 4, 2, 3, 4, 1], [0, 4, 2, 1, 4, 1]])
    table = ss.op_frequencies(codes)
    assert table.shape == (6, 5)
    np.testing.assert_allclose(table.sum(axis=1), 1.0)
    np.testing.assert_allclose(table[0], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(table[1], [0, 0.5, 0, 0, 0.5])
    np.testing.assert_allclose(table[5], [0.25, 0.75, 0, 0, 0])
    random_table = ss.op_frequencies(sample(ss.CellSpace().num_choices, 1000, 4))
    np.testing.assert_allclose(random_table.sum(axis=1), 1.0, rtol=1e-6)


def test_cell_space_offers_the_generic_interface():
    space = ss.CellSpace()
    assert space.num_choices == (5,) * 6
    assert space.describe(ss.genotype_from_string(NB201_EXAMPLE)) == NB201_EXAMPLE


# depth index 1 -> depth 2; widths 64 (index 2), 32 (index 1); activations relu (0), tanh (2); layers 3-4 inactive
DEPTH_TWO = [1, 2, 0, 1, 2, 3, 3, 0, 1]
FULL_DEPTH = [3, 0, 1, 3, 3, 1, 0, 2, 2]


def test_dense_masks_for_hand_made_codes():
    space = DenseSpace()
    assert space.num_choices == (4, 4, 4, 4, 4, 4, 4, 4, 4)
    masks = space.to_masks(np.array([DEPTH_TWO, FULL_DEPTH]))
    assert masks["unit_active"].shape == (2, 4, 128) and masks["unit_active"].dtype == np.float32
    np.testing.assert_array_equal(masks["layer_active"], [[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(masks["unit_active"].sum(axis=-1), [[64, 32, 0, 0], [16, 128, 32, 64]])
    assert masks["unit_active"][0, 0, :64].all() and not masks["unit_active"][0, 0, 64:].any()
    assert masks["unit_active"][0, 1, :32].all() and not masks["unit_active"][0, 1, 32:].any()
    np.testing.assert_array_equal(masks["activation"], [[0, 2, 3, 1], [1, 3, 0, 2]])
    np.testing.assert_array_equal(masks["depth"], [2, 4])
    assert space.describe(DEPTH_TWO) == "depth 2: 64 relu, 32 tanh"
    assert space.describe(FULL_DEPTH) == "depth 4: 16 gelu, 128 swish, 32 relu, 64 tanh"
    with pytest.raises(ValueError, match="decision 1"):
        space.to_masks([[0, 4, 0, 0, 0, 0, 0, 0, 0]])


def test_dense_codes_sample_and_mutate_one_decision():
    space = DenseSpace(max_depth=3, widths=(8, 16), activations=("relu", "tanh", "gelu"))
    codes = sample(space.num_choices, 3000, 7)
    assert codes.shape == (3000, 7) and codes.dtype == np.int32
    assert (codes.max(axis=0) == np.array(space.num_choices) - 1).all() and codes.min() == 0
    children = mutate_each(codes, space.num_choices, 8)
    changed = children != codes
    assert (changed.sum(axis=1) == 1).all()
    assert changed.any(axis=0).all()  # every decision gets picked
    assert (children.max(axis=0) < np.array(space.num_choices)).all()
    assert space.to_masks(children)["unit_active"].shape == (3000, 3, 16)


def test_hyperparameter_grid_and_values():
    space = HyperparameterSpace(learning_rates=(3e-4, 1e-3, 3e-3, 1e-2), weight_decays=(0.0, 1e-4, 1e-3), batch_sizes=(16, 64),
                                widths=(8,))
    assert space.num_choices == (2, 1, 4, 3)
    grid = space.grid()
    assert grid.shape == (24, 4) and grid.dtype == np.int32 and len(np.unique(grid, axis=0)) == 24
    values = space.values(grid)
    assert values["learning_rate"].dtype == np.float32 and values["learning_rate"].shape == (24,)
    assert values["batch_size"].dtype == np.int32 and values["width"].dtype == np.int32
    np.testing.assert_array_equal(values["batch_size"], np.repeat([16, 64], 12))  # shapes slowest: one shape per run of 12
    np.testing.assert_array_equal(values["width"], 8)
    np.testing.assert_allclose(values["learning_rate"], np.tile(np.repeat([3e-4, 1e-3, 3e-3, 1e-2], 3), 2).astype(np.float32))
    np.testing.assert_allclose(values["weight_decay"], np.tile([0.0, 1e-4, 1e-3], 8).astype(np.float32))
    one = space.values(np.array([[1, 0, 2, 1]]))
    assert one["learning_rate"][0] == np.float32(3e-3) and one["weight_decay"][0] == np.float32(1e-4) and one["batch_size"][0] == 64
    assert space.describe([1, 0, 2, 1]) == "batch 64, width 8, lr 0.003, wd 0.0001"
    with pytest.raises(ValueError, match="decision 2"):
        space.values([[0, 0, 4, 0]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rates=()), "learning_rates must list at least one value"),
    (dict(widths=()), "widths must list at least one value"),
    (dict(learning_rates=(1e-3, 0.0)), "learning_rates must all be > 0, got 0.0"),
    (dict(weight_decays=(-1e-4,)), "weight_decays must all be >= 0"),
    (dict(batch_sizes=(0,)), "batch_sizes must all be >= 1"),
])
def test_hyperparameter_space_rejects_empty_or_bad_grids(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HyperparameterSpace(**kwargs)


def test_hyperparameter_mutation_skips_single_choice_decisions():
    space = HyperparameterSpace(learning_rates=(1e-3, 1e-2), weight_decays=(0.0,), batch_sizes=(32,), widths=(16,))
    codes = sample(space.num_choices, 200, 9)
    children = mutate_each(codes, space.num_choices, 10)
    np.testing.assert_array_equal(children[:, 2], 1 - codes[:, 2])
    np.testing.assert_array_equal(children[:, [0, 1, 3]], 0)

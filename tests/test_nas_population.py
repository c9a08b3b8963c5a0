"""The vmap-free population program trains each member exactly as training it alone would."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archlab.arch import nas_cell
from archlab.arch.search_space import genotype_from_string
from archlab.train.nas.population import PopulationData, train_member, train_population

NET = nas_cell.CellNet(channels=4)
CODES = np.array([
    genotype_from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"),
    genotype_from_string("|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|nor_conv_1x1~2|"),
    genotype_from_string("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"),
    genotype_from_string("|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|avg_pool_3x3~1|nor_conv_1x1~2|"),
], np.int32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 8, 8, 1)).astype(np.float32)
    labels = (images.mean(axis=(1, 2, 3)) > 0).astype(np.int32) + 2 * (images[:, :4].mean(axis=(1, 2, 3)) > 0)
    return PopulationData(jnp.asarray(images[:48]), jnp.asarray(labels[:48]), jnp.asarray(images[48:]), jnp.asarray(labels[48:]))


def test_population_members_match_training_alone(data):
    rng = jax.random.PRNGKey(3)
    out = train_population(CODES, rng, data, steps=5, net=NET, batch_size=8, learning_rate=1e-2)
    assert out["losses"].shape == (5, 4) and out["val_accuracy"].shape == (4,)
    init = nas_cell.init_population(jax.random.split(rng)[0], len(CODES), NET)
    for m, code in enumerate(CODES):
        alone = train_member(code, jax.tree.map(lambda x: x[m], init), rng, data, steps=5, batch_size=8, learning_rate=1e-2)
        np.testing.assert_allclose(out["losses"][:, m], alone["losses"], rtol=1e-5, atol=1e-6, err_msg=f"member {m}")
        for name in ("stem", "conv3", "conv1", "head"):
            np.testing.assert_allclose(out["params"][name][m], alone["params"][name], rtol=1e-4, atol=1e-6, err_msg=f"member {m} {name}")
        np.testing.assert_allclose(out["val_accuracy"][m], alone["val_accuracy"])
    assert not np.allclose(out["losses"][-1, 0], out["losses"][-1, 1])  # members really differ


def test_per_member_learning_rates_are_one_call(data):
    rng = jax.random.PRNGKey(0)
    codes = np.repeat(CODES[:1], 3, axis=0)
    init = jax.tree.map(lambda x: jnp.repeat(x[:1], 3, axis=0), nas_cell.init_population(rng, 1, NET))
    out = train_population(codes, rng, data, steps=3, net=NET, batch_size=8, learning_rate=jnp.array([0.0, 1e-2, 1e-2]), params=init)
    np.testing.assert_array_equal(out["params"]["conv3"][0], init["conv3"][0])  # lr 0: never changes
    np.testing.assert_allclose(out["losses"][:, 1], out["losses"][:, 2], rtol=1e-6)  # same member, same lr
    assert not np.allclose(out["params"]["conv3"][1], init["conv3"][1])
    assert out["losses"][-1, 1] != out["losses"][-1, 0]


def test_pool_ignores_padding_and_dispatch_pads_with_invalid_rows():
    x = jnp.ones((1, 3, 3, 1))
    np.testing.assert_allclose(nas_cell.avg_pool_3x3(x), x)  # count_include_pad=False: a constant stays constant
    tables = nas_cell.op_dispatch(CODES)
    assert sorted(tables) == [f"{j}/{op}" for j in (1, 2, 3) for op in ("conv1", "conv3", "pool")]
    member, edge, valid = tables["2/conv3"]  # node 2 <- node 0 is edge 1, node 2 <- node 1 is edge 2
    assert tables["2/conv3"].shape == (3, 4)  # 2 pairs, rounded up to 4
    assert (member[:2].tolist(), edge[:2].tolist(), valid.tolist()) == ([0, 3], [1, 1], [1, 1, 0, 0])
    member, edge, valid = tables["1/conv3"]
    assert tables["1/conv3"].shape == (3, 4) and member[:1].tolist() == [0] and valid.sum() == 1
    member, edge, valid = tables["3/pool"]  # the (member, edge) pairs of node 3 choosing pool
    assert sorted(zip(member[valid == 1].tolist(), edge[valid == 1].tolist())) == [(3, 4)]
    with pytest.raises(ValueError, match="2 edges into node 2 use nor_conv_3x3 but capacity is 1"):
        nas_cell.op_dispatch(CODES, capacity=1)
    assert nas_cell.op_dispatch(CODES[:1])["1/pool"].shape == (3, 1)  # never more than j * P rows


def test_population_split_over_two_devices_matches_one(data):
    rng = jax.random.PRNGKey(1)
    one = train_population(CODES, rng, data, steps=3, net=NET, batch_size=8)
    two = train_population(CODES, rng, data, steps=3, net=NET, batch_size=8, devices=2)
    assert len(two["params"]["conv3"].sharding.device_set) == 2  # really split
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["params"]["conv3"], one["params"]["conv3"], rtol=1e-4, atol=1e-6)


def test_chunked_population_is_one_program_with_the_same_members(data):
    rng = jax.random.PRNGKey(2)
    whole = train_population(CODES, rng, data, steps=3, net=NET, batch_size=8, learning_rate=jnp.array([1e-2, 3e-3, 1e-2, 1e-3]))
    chunked = train_population(CODES[:3], rng, data, steps=3, net=NET, batch_size=8, learning_rate=jnp.array([1e-2, 3e-3, 1e-2]),
                               params=jax.tree.map(lambda x: x[:3], whole_init(rng)), chunk=2)  # 2 chunks, 1 padded member
    assert chunked["losses"].shape == (3, 3) and chunked["val_accuracy"].shape == (3,)
    np.testing.assert_allclose(chunked["losses"], whole["losses"][:, :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked["params"]["conv3"], whole["params"]["conv3"][:3], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(chunked["val_accuracy"], whole["val_accuracy"][:3])
    split = train_population(CODES, rng, data, steps=3, net=NET, batch_size=8, chunk=2, devices=2,
                             learning_rate=jnp.array([1e-2, 3e-3, 1e-2, 1e-3]))
    np.testing.assert_allclose(split["losses"], whole["losses"], rtol=1e-5, atol=1e-6)


def whole_init(rng):
    return nas_cell.init_population(jax.random.split(rng)[0], len(CODES), NET)


def test_a_chunk_that_does_not_fit_is_refused_before_compiling(data, monkeypatch):
    from archlab.train.nas import population

    needed = population.estimate_memory_bytes(4, batch_size=8, val_size=16, image_size=8, channels=4)
    assert needed == 4 * 8 * 8 * 4 * 4 * (20 * 8 + 15 * 16)
    monkeypatch.setattr(population, "available_memory_bytes", lambda device=None: needed - 1)
    with pytest.raises(population.PopulationMemoryError, match=r"chunk of 4 members .* needs about .* GiB .* use a smaller chunk"):
        train_population(CODES, jax.random.PRNGKey(0), data, steps=2, net=NET, batch_size=8)
    monkeypatch.setattr(population, "available_memory_bytes", lambda device=None: needed)
    train_population(CODES, jax.random.PRNGKey(0), data, steps=1, net=NET, batch_size=8)  # exactly enough: runs

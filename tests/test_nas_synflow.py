"""Synflow: hand-computed values on a tiny net, zero for disconnected cells, population = one member at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archlab.arch import nas_cell
from archlab.arch.search_space import genotype_from_string
from archlab.train.nas.scorer import score_batch
from archlab.train.nas.synflow import WEIGHTS, make_synflow_scorer, synflow_of_params, synflow_scores

SKIP_ONLY = genotype_from_string("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
CONV1_ONLY = genotype_from_string("|none~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|none~2|")
CONNECTED = [
    genotype_from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"),
    genotype_from_string("|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|avg_pool_3x3~1|nor_conv_1x1~2|"),
    genotype_from_string("|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|nor_conv_1x1~2|"),
    genotype_from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"),
    SKIP_ONLY,
]
DISCONNECTED = [
    genotype_from_string("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"),
    genotype_from_string("|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|none~1|none~2|"),
    genotype_from_string("|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|"),  # node 1 never fed
]
CODES = np.array(CONNECTED + DISCONNECTED, np.int32)
NET, IMAGE = nas_cell.CellNet(channels=4), 8


def stem_taps(size: int) -> np.ndarray:
    """valid[pixel, tap]: whether a SAME 3x3 conv's tap (dy, dx) at a pixel (row-major) is inside the image."""
    valid = np.zeros((size * size, 9))
    for y in range(size):
        for x in range(size):
            for t, (dy, dx) in enumerate(nas_cell.TAPS):
                valid[y * size + x, t] = 0 <= y + dy - 1 < size and 0 <= x + dx - 1 < size
    return valid


def test_tiny_cells_match_hand_computation_and_biases_are_not_scored():
    # channels 2 on a 4x4 image: the head's 4x4 grid has one pixel per block, so head rows are (pixel, channel).
    params = nas_cell.init_population(jax.random.PRNGKey(1), 2, nas_cell.CellNet(channels=2, num_classes=3))
    params["stem_bias"] = params["stem_bias"].at[1].set(jnp.array([0.3, -0.2]))  # made positive, feeds R, not scored
    params["head_bias"] = params["head_bias"].at[1].set(jnp.array([0.5, -1.0, 2.0]))
    scores = synflow_of_params(params, np.array([SKIP_ONLY, CONV1_ONLY]), image_size=4)
    assert scores.dtype == np.float64 and scores.shape == (2,)
    p = [jax.tree.map(lambda x: np.abs(np.asarray(x[m], np.float64)), params) for m in range(2)]
    valid = stem_taps(4)

    # member 0, one skip edge 0 -> 3: R = Σ stem(ones) ⊙ dR/d(node 3); biases are zero.
    stem, head = p[0]["stem"], p[0]["head"].reshape(16, 2, 3)
    stem_out = valid @ stem  # [16 pixels, 2]
    g_node3 = head.sum(axis=2)  # dR/d(node 3) [16, 2]
    r = (stem_out * g_node3).sum()
    by_hand = ((valid.T @ g_node3) * stem).sum() + (head * stem_out[..., None]).sum()
    assert by_hand == pytest.approx(2 * r, rel=1e-12)  # every path crosses two weights (Euler, degree 2)
    np.testing.assert_allclose(scores[0], by_hand, rtol=1e-12)

    # member 1, one 1x1 conv 0 -> 3 (edge 3), with positive biases.
    stem, bias, w, head = p[1]["stem"], p[1]["stem_bias"], p[1]["conv1"][3], p[1]["head"].reshape(16, 2, 3)
    stem_out = valid @ stem + bias
    conv = stem_out @ w  # ReLU is the identity on positive values
    g_conv = head.sum(axis=2)
    by_hand = ((valid.T @ (g_conv @ w.T)) * stem).sum() + ((stem_out.T @ g_conv) * w).sum() + (head * conv[..., None]).sum()
    np.testing.assert_allclose(scores[1], by_hand, rtol=1e-12)


@pytest.fixture(scope="module")
def scores():
    return synflow_scores(CODES, jax.random.PRNGKey(7), NET, image_size=IMAGE)


def test_disconnected_cells_score_exactly_zero(scores):
    np.testing.assert_array_equal(scores[len(CONNECTED):], 0.0)
    assert (scores[: len(CONNECTED)] > 0).all() and len(set(scores[: len(CONNECTED)].tolist())) == len(CONNECTED)


def member_synflow(params: dict, genotype: tuple) -> float:
    """The reference: one architecture's synflow through its own ``member_logits`` (lax.conv, only its ops)."""
    with jax.enable_x64(True):
        positive = jax.tree.map(lambda x: jnp.abs(jnp.asarray(x, jnp.float64)), params)
        ones = jnp.ones((1, IMAGE, IMAGE, 1), jnp.float64)
        grads = jax.grad(lambda q: nas_cell.member_logits(q, genotype, ones).sum())(positive)
        return float(sum((grads[k] * positive[k]).sum() for k in WEIGHTS))


def test_population_equals_one_member_at_a_time(scores):
    params = nas_cell.init_population(jax.random.PRNGKey(7), len(CODES), NET)
    alone = [member_synflow(jax.tree.map(lambda x: x[m], params), tuple(int(g) for g in code)) for m, code in enumerate(CODES)]
    np.testing.assert_allclose(scores, alone, rtol=1e-10, atol=0)


def test_scorer_contract_is_deterministic_in_the_seed(scores):
    score_fn = make_synflow_scorer(NET, image_size=IMAGE)
    np.testing.assert_array_equal(score_fn(CODES, 7), scores)  # seed 7 = PRNGKey(7)
    key = np.asarray(jax.random.PRNGKey(3))
    first = score_batch(score_fn, CODES, key)
    assert first.shape == (len(CODES),) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, score_batch(score_fn, CODES, key))
    assert not np.allclose(first[: len(CONNECTED)], scores[: len(CONNECTED)])  # another seed, another initialisation


def test_bad_codes_and_image_size_are_rejected_before_any_work():
    with pytest.raises(ValueError, match=r"\[P, 6\]"):
        synflow_scores(CODES[0], jax.random.PRNGKey(0), NET)
    with pytest.raises(ValueError, match="decision 2"):
        synflow_scores(np.array([[0, 1, 5, 0, 0, 0]]), jax.random.PRNGKey(0), NET)
    with pytest.raises(ValueError, match="multiple of 4"):
        synflow_scores(CODES, jax.random.PRNGKey(0), NET, image_size=6)

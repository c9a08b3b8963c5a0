"""NAS search strategies over an abstract scorer, the tabular benchmark, and the search driver."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from archlab.arch.search_space import codes_from_indices, indices_from_codes
from archlab.configs.nas import get_config as nas_defaults
from archlab.train.nas.benchmark_table import (CELL_CHOICES, TableError, generate_table, genotype_from_string,
                                       genotype_to_string, is_connected, load_table)
from archlab.train.nas.evolution import evolution_step, init_evolution
from archlab.train.nas.history import best_so_far
from archlab.train.nas.reinforce import controller_probabilities, init_reinforce, reinforce_step, sample_architectures
from archlab.train.nas.search import init_search, run_search, summarize_best
from archlab.train.nas.search_config import search_config
from archlab.train.nas.small_jit import small_jit
from archlab.train.nas.space_ops import mutate, random_codes

GENERIC = (4, 1, 6)  # a small non-cell space, with a decision that has one choice; tests share its compiles
STRATEGY_CFG = {"search": {"population": 6, "sample_size": 3, "children_per_cycle": 4, "batch_size": 7,
                           "controller_batch": 5}}

EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def toy_score(codes, rng_seed):
    """A deterministic scorer with a unique optimum, used where the table is not the point."""
    codes = np.asarray(codes)
    return (codes * np.arange(1, codes.shape[1] + 1)).sum(1) % 7 + 0.1 * codes[:, 0]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return generate_table(str(tmp_path_factory.mktemp("nas") / "table.csv"), rng_seed=0)


# ---- space ops ----

@pytest.mark.parametrize("num_choices", [(5,) * 6, GENERIC])
def test_mutation_changes_exactly_one_decision_to_another_value(num_choices):
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    parents = random_codes(jax.random.PRNGKey(1), num_choices, 400)
    children = np.asarray(small_jit(jax.vmap(lambda k, c: mutate(k, c, num_choices)))(keys, parents))
    changed = children != np.asarray(parents)
    assert (changed.sum(1) == 1).all()
    assert (children >= 0).all() and (children < np.asarray(num_choices)).all()
    sizes = np.asarray(num_choices)
    assert (changed.sum(0)[sizes > 1] > 0).all() and (changed.sum(0)[sizes == 1] == 0).all()  # every mutable decision, never a fixed one


def test_codes_index_round_trip_in_lexicographic_order():
    codes = codes_from_indices(np.arange(24), (3, 2, 4))
    assert codes[:3].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2]] and codes[-1].tolist() == [2, 1, 3]
    np.testing.assert_array_equal(indices_from_codes(codes, (3, 2, 4)), np.arange(24))


# ---- regularized evolution ----

def test_evolution_keeps_population_size_and_removes_the_oldest():
    calls = []

    def score(codes, rng_seed):
        calls.append(codes.shape)
        return toy_score(codes, rng_seed)

    cfg = {"search": {"budget": 40, "population": 8, "sample_size": 3, "children_per_cycle": 3}}
    state = evolution_step(init_evolution(0, CELL_CHOICES, cfg), score, cfg)
    np.testing.assert_array_equal(state.born, np.arange(8))
    for cycle in range(7):
        before = state
        state = evolution_step(state, score, cfg)
        assert state.codes.shape == (8, 6) and state.scores.shape == (8,)
        n = int(state.history.count)
        gone = set(before.born.tolist()) - set(state.born.tolist())
        assert gone == set(np.sort(before.born)[:3].tolist())  # the three oldest went
        assert sorted(state.born.tolist()) == list(range(n - 8, n))  # the population is the 8 newest evaluations
        np.testing.assert_array_equal(state.codes, state.history.codes[state.born])
        np.testing.assert_array_equal(state.scores, state.history.scores[state.born])
    assert calls == [(8, 6)] + [(3, 6)] * 7  # the initial population, then children, each batch in one call


def test_evolution_mutates_the_tournament_winner():
    cfg = {"search": {"budget": 60, "population": 6, "sample_size": 6, "children_per_cycle": 6}}  # tournament = everyone
    state = evolution_step(init_evolution(3, CELL_CHOICES, cfg), toy_score, cfg)
    best = state.codes[np.argmax(state.scores)]
    state = evolution_step(state, toy_score, cfg)
    children = state.history.codes[6:12]
    assert ((children != best).sum(1) == 1).all()


# ---- REINFORCE ----

def test_controller_raises_the_probability_of_a_rewarded_op():
    def reward(codes, rng_seed):  # fraction of positions choosing op 3
        return (np.asarray(codes) == 3).mean(1)

    cfg = {"search": {"budget": 10_000}}  # default batch and learning rate
    state = init_reinforce(0, CELL_CHOICES, cfg)
    np.testing.assert_allclose(controller_probabilities(state), 0.2, atol=0.01)  # starts near uniform
    for _ in range(40):
        state = reinforce_step(state, reward, cfg)
    probs = controller_probabilities(state)
    assert probs.shape == (6, 5)
    assert (probs[:, 3] > 0.6).all(), probs
    codes, log_prob, entropy = sample_architectures(state, jax.random.PRNGKey(9), 10)
    assert codes.shape == (10, 6) and log_prob.shape == entropy.shape == (10,)
    assert (codes == 3).mean() > 0.6 and (log_prob < 0).all()


def test_controller_masks_choices_a_decision_does_not_have():
    state = init_reinforce(0, GENERIC, STRATEGY_CFG)
    codes = np.concatenate([sample_architectures(state, jax.random.PRNGKey(i), 5)[0] for i in range(30)])
    assert codes[:, 0].max() == 3 and (codes[:, 1] == 0).all() and codes[:, 2].max() == 5 and codes.min() == 0
    probs = controller_probabilities(state)
    assert probs.shape == (3, 6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert probs[0, 4:].max() == 0 and probs[1, 0] == pytest.approx(1.0)


# ---- strategies compared on a generated table ----

def test_generated_table_has_a_known_connected_optimum(table):
    assert len(table) == 5**6
    best = table.optimal_code
    assert is_connected(best) and table.score_fn(best[None], 0)[0] == table.optimum
    assert table.score_fn(np.zeros((1, 6), np.int32), 0)[0] < 20  # all 'none': disconnected, near chance
    assert is_connected(genotype_from_string("|none~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|nor_conv_3x3~2|"))
    assert not is_connected(genotype_from_string("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|"))


def test_evolution_beats_random_search_on_a_generated_table(table):
    cfg = {"search": {"population": 20, "sample_size": 5, "children_per_cycle": 4, "batch_size": 20}}
    best = {}
    for strategy in ("evolution", "random"):
        best[strategy] = np.asarray([run_search(strategy, table.score_fn, CELL_CHOICES, 300, cfg, seed)[1].scores.max()
                                     for seed in range(5)])
    summary = summarize_best(best, optimum=table.optimum)
    assert summary["evolution"]["best_mean"] > summary["random"]["best_mean"]
    regret = {name: row["regret_mean"] for name, row in summary.items()}
    assert regret["evolution"] < 0.5 * regret["random"], regret  # measured: ~0.05 vs ~3.5 points
    assert regret["evolution"] >= 0 and regret["random"] == pytest.approx(table.regret(best["random"]).mean())


# ---- driver: determinism, resume, grid ----

@pytest.mark.parametrize("strategy", ["evolution", "reinforce", "random", "grid"])
def test_same_seed_gives_the_same_history(strategy):
    _, first = run_search(strategy, toy_score, GENERIC, 24, STRATEGY_CFG, seed=1)
    _, again = run_search(strategy, toy_score, GENERIC, 24, STRATEGY_CFG, seed=1)
    assert first.codes.shape == (24, 3)
    np.testing.assert_array_equal(first.codes, again.codes)
    np.testing.assert_array_equal(first.scores, again.scores)
    if strategy != "grid":
        _, other = run_search(strategy, toy_score, GENERIC, 24, STRATEGY_CFG, seed=2)
        assert not np.array_equal(first.codes, other.codes)


@pytest.mark.parametrize("strategy", ["evolution", "reinforce", "random", "grid"])
def test_a_run_split_through_an_orbax_checkpoint_matches_a_straight_run(strategy, tmp_path):
    seeds_seen = []

    def score(codes, rng_seed):
        seeds_seen.append(rng_seed)
        return toy_score(codes, rng_seed) + (rng_seed % 1000) * 1e-4  # the scorer's seed is part of the replay

    budget, num_choices = 23, GENERIC
    _, straight = run_search(strategy, score, num_choices, budget, STRATEGY_CFG, seed=5)
    straight_seeds, seeds_seen[:] = list(seeds_seen), []

    hooked = []
    first_half, _ = run_search(strategy, score, num_choices, budget, STRATEGY_CFG, seed=5, max_cycles=3,
                               hook=lambda state, codes, scores: hooked.append(scores))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", first_half)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", init_search(strategy, num_choices, budget, STRATEGY_CFG, seed=0))
    assert 0 < int(restored.history.count) < budget
    state, resumed = run_search(strategy, score, num_choices, budget, STRATEGY_CFG, state=restored,
                                hook=lambda state, codes, scores: hooked.append(scores))
    np.testing.assert_array_equal(resumed.codes, straight.codes)
    np.testing.assert_array_equal(resumed.scores, straight.scores)
    np.testing.assert_array_equal(np.concatenate(hooked), straight.scores)  # the hook saw every evaluation once
    assert seeds_seen == straight_seeds


def test_grid_search_enumerates_every_code_exactly_once():
    num_choices = (3, 2, 4)
    calls = []
    state, history = run_search("grid", lambda c, s: calls.append(len(c)) or toy_score(c, s), num_choices, 100,
                                {"search": {"batch_size": 5}})
    np.testing.assert_array_equal(indices_from_codes(history.codes, num_choices), np.arange(24))
    assert calls == [5, 5, 5, 5, 4]
    _, prefix = run_search("grid", toy_score, num_choices, 7, {"search": {"batch_size": 5}})
    np.testing.assert_array_equal(prefix.codes, history.codes[:7])


def test_budget_is_respected_when_batches_do_not_divide_it():
    for strategy in ("evolution", "reinforce", "random"):
        _, history = run_search(strategy, toy_score, GENERIC, 19, STRATEGY_CFG, seed=0)
        assert len(history.scores) == 19
        assert best_so_far(history.scores)[-1] == history.scores.max()


def test_unknown_strategy_and_bad_config_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown search strategy 'annealing'; valid: evolution, reinforce, random, grid"):
        run_search("annealing", toy_score, CELL_CHOICES, 10)
    with pytest.raises(ValueError, match=r"search.budget must be > 0"):
        run_search("random", toy_score, CELL_CHOICES, 0)
    with pytest.raises(ValueError, match=r"search.population must be > 0"):
        search_config({"search": {"population": 0}})
    with pytest.raises(ValueError, match=r"search.budget \(10\) must be >= search.population \(16\)"):
        run_search("evolution", toy_score, CELL_CHOICES, 10)
    with pytest.raises(ValueError, match="a SamplingState cannot continue a search with strategy .evolution."):
        run_search("evolution", toy_score, GENERIC, 20, STRATEGY_CFG, state=init_search("random", GENERIC, 20))
    with pytest.raises(ValueError, match="holds 12 evaluations, fewer than search.budget=20"):
        run_search("random", toy_score, GENERIC, 20, STRATEGY_CFG, state=init_search("random", GENERIC, 12))


def test_search_config_accepts_dicts_and_ml_collections():
    nested = ml_collections.ConfigDict({"search": {"budget": 50, "population": 10, "seeds": 2, "steps_per_member": 5,
                                                   "scorer": "table"}})  # keys owned elsewhere are ignored
    cfg = search_config(nested)
    assert (cfg.budget, cfg.population, cfg.seeds, cfg.steps_per_member) == (50, 10, 2, 5)
    assert search_config({"search.budget": "70"}).budget == 70 and search_config({"budget": 9}).budget == 9
    with pytest.raises(ValueError, match="search.population must be int, got 2.5"):
        search_config({"search": {"population": 2.5}})


def test_search_config_defaults_are_configs_nas():
    search = nas_defaults().search
    assert dataclasses.asdict(search_config()) == {k: v for k, v in search.items() if k != "space"}
    with pytest.raises(ValueError, match="bad value for config.search.budget: 'x' is not a valid int"):
        search_config({"search.budget": "x"})  # a string is parsed as a --config.search.budget flag is


# ---- tabular benchmark ----

def test_genotype_string_round_trip():
    code = genotype_from_string(EXAMPLE)
    assert code.tolist() == [3, 3, 4, 1, 3, 1]
    assert genotype_to_string(code) == EXAMPLE


def test_table_formats_load_to_the_same_scores(table, tmp_path):
    codes = codes_from_indices(np.arange(0, 5**6, 997), CELL_CHOICES)
    scores = table.score_fn(codes, 0)
    arches = [genotype_to_string(c) for c in codes]
    (tmp_path / "flat.json").write_text(json.dumps(dict(zip(arches, scores.tolist()))))
    (tmp_path / "nats.json").write_text(json.dumps(  # NATS-Bench get_more_info records with the arch added
        [{"arch": a, "train-loss": 0.1, "valid-accuracy": s, "test-accuracy": s - 1} for a, s in zip(arches, scores.tolist())]))
    (tmp_path / "nested.json").write_text(json.dumps({a: {"valid-accuracy": s} for a, s in zip(arches, scores.tolist())}))
    (tmp_path / "t.csv").write_text("arch,accuracy\n" + "".join(f"{a},{s!r}\n" for a, s in zip(arches, scores.tolist())))
    for name in ("flat.json", "nats.json", "nested.json", "t.csv"):
        loaded = load_table(str(tmp_path / name))
        assert len(loaded) == len(codes)
        np.testing.assert_array_equal(loaded.score_fn(codes, 0), scores)
    np.testing.assert_array_equal(load_table(str(tmp_path / "nats.json"), metric="test-accuracy").score_fn(codes, 0), scores - 1)
    with pytest.raises(TableError, match="has no entry for"):
        loaded.score_fn(codes_from_indices(np.asarray([1]), CELL_CHOICES), 0)


@pytest.mark.parametrize("name,content,message", [
    ("missing.csv", None, "does not exist"),
    ("empty.csv", "", "is empty"),
    ("header.csv", "arch\n" + EXAMPLE + "\n", "no accuracy / valid-accuracy / valid_accuracy field"),
    ("columns.csv", "name,accuracy\nx,1\n", "CSV header must hold 'arch'"),
    ("only_header.csv", "arch,accuracy\n", "has no rows"),
    ("broken.json", '{"a": ', "is not valid JSON"),
    ("scalar.json", "3", "JSON must be an object"),
    ("score.csv", f"arch,accuracy\n{EXAMPLE},high\n", "line 2: score 'high' is not a number"),
    ("dupe.csv", f"arch,accuracy\n{EXAMPLE},1\n{EXAMPLE},2\n", "line 3: duplicate entry"),
    ("op.csv", f"arch,accuracy\n{EXAMPLE.replace('avg_pool_3x3', 'max_pool')},1\n",
     r"line 2: edge 3 \(node 2 <- node 1\): unknown op 'max_pool'; valid ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3"),
    ("index.json", json.dumps({EXAMPLE.replace("skip_connect~2", "skip_connect~1"): 1.0}),
     r"edge 6 \(node 3 <- node 2\): wrong input index '~1', expected '~2'"),
    ("nodes.json", json.dumps({"|nor_conv_3x3~0|+|none~0|none~1|": 1.0}), "2 node groups separated by '\\+', expected 3"),
])
def test_table_loader_errors_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(TableError, match=message) as info:
        load_table(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, ValueError)

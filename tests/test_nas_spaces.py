"""NAS over the dense and hyperparameter spaces: population equalities, grid coverage, launch.nas wiring and errors."""

import json
import subprocess

import jax
import numpy as np
import optax
import pytest
from conftest import REPO, cli_env

from archlab.arch.nas_cell import CellNet
from archlab.arch.search_space import DenseSpace, HyperparameterSpace, genotype_from_string
from archlab.launch.nas import main as nas_main
from archlab.train.nas.config import make_space, nas_config
from archlab.train.nas.dense_population import ACTIVATIONS, init_dense_population, train_dense_population
from archlab.train.nas.hparam_population import shape_groups, shared_init, train_hyperparameters
from archlab.train.nas.population import digits_data, train_population
from archlab.train.nas.search import run_search
from archlab.train.nas.small_jit import small_jit

CELL = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def digits8():
    return digits_data(8)


# ---- dense space: one masked population = each member trained alone as a plain MLP ----

def _plain_mlp(params, p, space, code, in_features):
    """Member p's active slice of the padded params, as the layers of an unmasked MLP of its own depth and widths."""
    depth, widths = int(code[0]) + 1, [space.widths[c] for c in code[1::2]]
    acts = [space.activations[c] for c in code[2::2]][:depth]
    layers = [(params["w_in"][p, :in_features, : widths[0]], params["b_in"][p, : widths[0]])]
    for i in range(1, depth):
        layers.append((params["w_hidden"][p, i - 1, : widths[i - 1], : widths[i]], params["b_hidden"][p, i - 1, : widths[i]]))
    layers.append((params["w_out"][p, : widths[depth - 1]], params["b_out"][p]))
    return layers, acts


def _train_plain(layers, acts, data, data_rng, steps, batch_size, learning_rate, weight_decay):
    def logits(layers, x):
        for (w, b), act in zip(layers[:-1], acts):
            x = ACTIVATIONS[act](x @ w + b)
        w, b = layers[-1]
        return x @ w + b

    x_all = np.asarray(data.train_images).reshape(len(data.train_images), -1)
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    @small_jit  # compiled fast on CPU; one compile per member's shapes
    def step(layers, opt, x, y):
        loss, grads = jax.value_and_grad(lambda l: optax.softmax_cross_entropy_with_integer_labels(logits(l, x), y).mean())(layers)
        updates, opt = tx.update(grads, opt, layers)
        return optax.apply_updates(layers, updates), opt, loss

    opt, losses = tx.init(layers), []
    for i in range(steps):
        rows = jax.random.randint(jax.random.fold_in(data_rng, i), (batch_size,), 0, len(x_all))
        layers, opt, loss = step(layers, opt, x_all[rows], data.train_labels[rows])
        losses.append(float(loss))
    return np.asarray(losses)


def test_dense_members_train_like_plain_narrower_shallower_mlps(digits8):
    space = DenseSpace(max_depth=3, widths=(4, 8, 12), activations=("relu", "tanh", "gelu", "swish"))
    codes = np.array([[0, 1, 0, 2, 3, 0, 0],  # depth 1: 8 relu (deeper genes inactive)
                      [1, 0, 1, 2, 3, 1, 2],  # depth 2: 4 tanh, 12 swish
                      [2, 2, 2, 0, 0, 1, 3],  # depth 3: 12 gelu, 4 relu, 8 swish
                      [2, 2, 3, 2, 1, 2, 0]])  # full width, full depth
    rng, steps, batch = jax.random.PRNGKey(3), 6, 16
    params = init_dense_population(jax.random.PRNGKey(4), space, codes, 64)
    result = train_dense_population(codes, rng, digits8, steps, space=space, batch_size=batch, learning_rate=1e-2,
                                    weight_decay=0.1, params=params)
    assert result["losses"].shape == (steps, 4) and result["val_accuracy"].shape == (4,)
    data_rng = jax.random.split(rng)[1]
    for p, code in enumerate(codes):
        layers, acts = _plain_mlp(params, p, space, code, 64)
        alone = _train_plain(layers, acts, digits8, data_rng, steps, batch, 1e-2, 0.1)
        np.testing.assert_allclose(np.asarray(result["losses"])[:, p], alone, rtol=1e-5, atol=1e-5)
    assert np.asarray(result["losses"])[-1].mean() < np.asarray(result["losses"])[0].mean()


def test_dense_init_scales_by_each_members_own_fan_in():
    space = DenseSpace(max_depth=2, widths=(4, 64), activations=("relu",))
    params = init_dense_population(jax.random.PRNGKey(0), space, [[1, 0, 0, 1, 0], [1, 1, 0, 1, 0]], 64)
    narrow = np.asarray(params["w_hidden"][0, 0, :4, :64]).std()
    wide = np.asarray(params["w_hidden"][1, 0, :64, :64]).std()
    assert 0.35 < narrow < 0.65 and 0.09 < wide < 0.16  # 1/sqrt(4) and 1/sqrt(64)


# ---- hyperparameter space: one call per (batch, width), per-member lr/wd ----

def test_hyperparameter_groups_equal_separate_training_per_member(digits8):
    space = HyperparameterSpace(learning_rates=(1e-2, 3e-2), weight_decays=(0.0, 0.1), batch_sizes=(8,), widths=(4, 6))
    codes = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 1, 1]])  # widths 4, 6, 4
    groups = shape_groups(space, codes)
    assert [(b, w, m.tolist()) for b, w, m in groups] == [(8, 4, [0, 2]), (8, 6, [1])]
    genotype, rng, steps = genotype_from_string(CELL), jax.random.PRNGKey(5), 3
    together = train_hyperparameters(codes, rng, digits8, steps, space=space, genotype=genotype)
    assert together["calls"] == [(8, 4, 2), (8, 6, 1)]  # one vmap-ed call per shape, lr/wd differing inside it
    values = space.values(codes)
    for m in (0, 2):  # the width-4 group, each member trained alone (one compile for both)
        width = int(values["width"][m])
        alone = train_population(genotype[None], rng, digits8, steps, net=CellNet(channels=width),
                                 batch_size=8, learning_rate=float(values["learning_rate"][m]),
                                 weight_decay=float(values["weight_decay"][m]), params=shared_init(rng, width, 1))
        np.testing.assert_allclose(together["losses"][:, m], np.asarray(alone["losses"])[:, 0], rtol=1e-5, atol=1e-5)
        assert together["val_accuracy"][m] == pytest.approx(float(alone["val_accuracy"][0]), abs=1e-6)
    assert not np.allclose(together["losses"][:, 0], together["losses"][:, 2])  # lr/wd really differ inside a group


def test_hyperparameter_calls_are_padded_and_repeats_trained_once(monkeypatch, digits8):
    import archlab.train.nas.hparam_population as hp

    calls = []

    def fake_train_population(codes, rng, data, steps, *, net, batch_size, learning_rate, weight_decay, params, devices):
        calls.append((batch_size, net.channels, len(codes)))
        assert devices == 1
        assert len(learning_rate) == len(weight_decay) == len(codes) == len(params["head"])
        return {"losses": np.tile(learning_rate + weight_decay, (steps, 1)), "val_accuracy": learning_rate * 10 + net.channels}

    monkeypatch.setattr(hp, "train_population", fake_train_population)
    monkeypatch.setattr(hp, "shared_init", lambda rng, width, size, *a: {"head": np.zeros((size, 1))})
    space = HyperparameterSpace(learning_rates=(0.01, 0.02, 0.03), weight_decays=(0.0, 0.5), batch_sizes=(8, 16), widths=(4,))
    codes = np.array([[1, 0, 2, 1], [0, 0, 0, 0], [1, 0, 2, 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    out = hp.train_hyperparameters(codes, jax.random.PRNGKey(0), digits8, 2, space=space, genotype=genotype_from_string(CELL), pad_to=4)
    assert calls == out["calls"] == [(16, 4, 4), (8, 4, 4)]  # 2 + 2 distinct settings per shape, each padded to 4
    values = space.values(codes)
    np.testing.assert_allclose(out["val_accuracy"], values["learning_rate"] * 10 + 4, rtol=1e-6)
    np.testing.assert_allclose(out["losses"], np.tile(values["learning_rate"] + values["weight_decay"], (2, 1)), rtol=1e-6)


@pytest.mark.parametrize("budget", [100, 7])
def test_grid_search_covers_every_combination_once(budget):
    space = HyperparameterSpace(learning_rates=(1e-3, 1e-2, 3e-2), weight_decays=(0.0, 0.1), batch_sizes=(16, 32), widths=(8,))
    seen = []

    def score(codes, rng_seed):
        seen.append(np.asarray(codes))
        return np.zeros(len(codes))

    _, history = run_search("grid", score, space.num_choices, budget, {"search": {"batch_size": 5}})
    codes = np.concatenate(seen)
    expected = space.grid()[: min(budget, 12)]
    np.testing.assert_array_equal(codes, expected)  # lexicographic: shapes slowest
    assert len({tuple(c) for c in codes}) == len(codes) == min(budget, 12)
    np.testing.assert_array_equal(history.codes, expected)


# ---- launch.nas wiring ----

def _nas(*args):
    return subprocess.run(["python", "-m", "launch.nas", *args], capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=600)


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_hparams_grid_through_the_cli(tmp_path):
    proc = _nas("--strategy=grid", f"--workdir={tmp_path}", "--config.search.space=hparams", "--config.search.budget=50",
                "--config.search.steps_per_member=2", "--config.scorer.image_size=8", "--config.hparams.learning_rates=0.01,0.03",
                "--config.hparams.weight_decays=0,0.1", "--config.hparams.batch_sizes=8", "--config.hparams.widths=4",
                f"--config.hparams.genotype={CELL}")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "grid" / "seed_0" / "history.jsonl")
    assert sorted(tuple(r["code"]) for r in rows) == sorted(map(tuple, HyperparameterSpace(
        learning_rates=(0.01, 0.03), weight_decays=(0.0, 0.1), batch_sizes=(8,), widths=(4,)).grid().tolist()))
    assert all("genotype" not in r and r["member"].startswith("batch 8, width 4, lr ") and 0 <= r["score"] <= 100 for r in rows)
    best = json.load(open(tmp_path / "best.json"))
    assert best["space"] == "hparams" and best["genotype"] == CELL and set(best["values"]) == {"batch_size", "width", "learning_rate",
                                                                                                "weight_decay"}
    assert best["score"] == max(r["score"] for r in rows)
    assert "--config.model.channels=" in proc.stdout and "--config.train.learning_rate=" in proc.stdout


def test_dense_evolution_through_the_cli(tmp_path):
    proc = _nas("--strategy=evolution", f"--workdir={tmp_path}", "--config.search.space=dense", "--config.search.budget=10",
                "--config.search.population=6", "--config.search.sample_size=3", "--config.search.children_per_cycle=4",
                "--config.search.steps_per_member=5", "--config.scorer.chunk=6", "--config.dense.max_depth=2",
                "--config.dense.widths=8,16")
    assert proc.returncode == 0, proc.stderr
    rows = _rows(tmp_path / "evolution" / "seed_0" / "history.jsonl")
    assert len(rows) == 10 and all(len(r["code"]) == 5 and r["member"].startswith("depth ") for r in rows)
    best = json.load(open(tmp_path / "best.json"))
    assert best["space"] == "dense" and best["member"] in {r["member"] for r in rows}


@pytest.mark.parametrize("args,message", [
    (["--strategy=random", "--config.search.space=conv"], "search.space must be one of cell, dense, hparams (got 'conv')"),
    (["--strategy=grid", "--config.search.space=hparams", "--config.hparams.genotype=|nor_conv_3x3~0|+|conv9x9~0|none~1|"],
     "bad hparams.genotype: genotype has 2 node groups"),
    (["--strategy=grid", "--config.search.space=hparams", "--config.hparams.genotype=|conv9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|"],
     "bad hparams.genotype: edge 1 (node 1 <- node 0): unknown op 'conv9x9'; valid ops: none"),
    (["--strategy=grid", "--config.search.space=hparams", "--config.hparams.learning_rates="],
     "hparams.learning_rates must list at least one value"),
    (["--strategy=grid", "--config.search.space=hparams", "--config.hparams.batch_sizes=0,8"], "hparams.batch_sizes must all be >= 1"),
    (["--strategy=random", "--config.search.space=dense", "--config.dense.widths="], "dense.widths must list at least one width"),
    (["--strategy=random", "--config.search.space=dense", "--config.dense.activations=relu,softplus"],
     "dense.activations: unknown activation 'softplus'"),
    (["--strategy=random", "--config.search.space=dense", "--config.dense.max_depth=0"], "dense.max_depth must be >= 1"),
    (["--strategy=random", "--config.search.space=dense", "--config.scorer.kind=synflow"], "search.space=dense is scored by training"),
])
def test_bad_space_input_is_one_line(tmp_path, capsys, args, message):
    (tmp_path / "best.json").write_text('{"kept": true}')
    with pytest.raises(SystemExit) as exit_info:
        nas_main([*args, f"--workdir={tmp_path}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert json.load(open(tmp_path / "best.json")) == {"kept": True}


@pytest.mark.parametrize("args,message", [
    (["--strategy=random", "--config.search.budget=abc"], "bad value for config.search.budget: 'abc' is not a valid int"),
    (["--strategy=random", "--config.search=1"], "config.search is a section, not a field"),
    (["--strategy=random", "--config=configs/cnn.py"], "a NAS config file starts from configs/nas.py"),
    (["--strategy=random", "--config=configs/nas.py:big"], "unknown arg 'big'"),
    (["--strategy=random", "--config=configs/nas.py", "--config.search.population=-2"], "search.population must be > 0"),
])
def test_config_file_and_override_errors_are_launch_train_s(tmp_path, capsys, args, message):
    """``--config=FILE`` and ``--config.X=V`` go through train.config's loader and parser: the same one-line errors."""
    with pytest.raises(SystemExit) as exit_info:
        nas_main([*args, f"--workdir={tmp_path}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_the_spaces_default_grids_are_the_config_files():
    config = nas_config()
    for name, space in (("dense", DenseSpace()), ("hparams", HyperparameterSpace())):
        config.search.space = name
        assert make_space(config) == space


def test_bad_space_through_a_real_process(tmp_path):
    proc = _nas("--strategy=grid", "--config.search.space=hparams", "--config.hparams.widths=", f"--workdir={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: hparams.widths must list at least one value (the grid would be empty)"], proc.stderr


def test_a_workdir_of_another_space_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"search": {"space": "cell"}}))
    with pytest.raises(SystemExit) as exit_info:
        nas_main(["--strategy=random", "--config.search.space=dense", f"--workdir={tmp_path}"])
    assert exit_info.value.code == 2 and "holds a search over search.space=cell" in capsys.readouterr().err

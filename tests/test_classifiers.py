"""Image classifiers (MLP, CNN), their data loaders, and a short real training run."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archlab.arch import get_model_spec
from archlab.train.data import DataError
from archlab.train.data.images import load_images
from archlab.train.data.pipeline import array_stream
from archlab.train.loop import train_and_evaluate
from archlab.train.optim import make_optimizer
from archlab.train.state import init_train_state, param_count
from archlab.train.step import make_train_step
from archlab.train.tasks import get_task

from conftest import tiny_config

FAMILIES = {
    # name: (overrides, input shape, parameter count worked out by hand)
    "mlp": ({"model__hidden": "32"}, (8, 8, 1), 64 * 32 + 32 + 32 * 10 + 10),
    "cnn": ({"model__channels": "4,8", "model__dense": "16", "data__image_size": "16"}, (16, 16, 1),
            (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8) + (4 * 4 * 8 * 16 + 16) + (16 * 10 + 10)),
}


def _classifier(name):
    overrides, shape, count = FAMILIES[name]
    config = tiny_config(name, **overrides)
    module = get_model_spec(name).make_module(config.model)
    x = jnp.asarray(np.random.default_rng(0).random((4,) + shape), jnp.float32)
    return config, module, x, count


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_shape_and_parameter_count(name):
    _, module, x, count = _classifier(name)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), x)["params"])
    assert module.apply({"params": params}, x).shape == (4, 10)
    assert param_count(params) == count


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    _, module, x, _ = _classifier(name)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), x)["params"])
    labels = jnp.arange(4) % 10
    batch = {"inputs": x, "labels": labels}
    grads = jax.grad(lambda p: get_task("classification").loss_fn(module, p, {}, batch, jax.random.PRNGKey(1), True)[0])(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_overfits_one_batch(name):
    config, module, x, _ = _classifier(name)
    config = tiny_config(name, **FAMILIES[name][0], train__learning_rate="1e-2", train__warmup_steps="0", train__weight_decay="0", train__steps="200",
                         model__dropout_rate="0")
    tx = make_optimizer(config.train)
    x = jnp.asarray(np.random.default_rng(0).random((16,) + FAMILIES[name][1]), jnp.float32)
    batch = {"inputs": x, "labels": jnp.arange(16) % 10}
    state = nn.meta.unbox(init_train_state(module, tx, x[:1], jax.random.PRNGKey(0)))
    step = jax.jit(make_train_step(module=module, task=get_task("classification"), tx=tx))
    first = None
    for i in range(200):
        state, metrics = step(state, batch, jax.random.PRNGKey(i))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first / 10 and float(metrics["accuracy"]) == 1.0


def test_array_iterator_visits_every_example_once_per_epoch_and_resumes():
    arrays = {"inputs": np.arange(20, dtype=np.float32)[:, None], "labels": np.arange(20, dtype=np.int32)}
    it = array_stream(arrays, 5, seed=1)
    epoch = np.concatenate([next(it)["labels"] for _ in range(4)])
    assert sorted(epoch.tolist()) == list(range(20))
    second = np.concatenate([next(it)["labels"] for _ in range(4)])
    assert sorted(second.tolist()) == list(range(20)) and not np.array_equal(epoch, second)
    again = array_stream(arrays, 5, seed=1)
    again.set_state({"position": 6, "grain": ""})
    np.testing.assert_array_equal(next(again)["labels"], second[10:15])


def test_digits_default_split_is_fixed_and_resized():
    a = load_images("", 16, 0.2)
    b = load_images("", 0, 0.2)
    assert a.x_train.shape == (1438, 16, 16, 1) and b.x_train.shape == (1438, 8, 8, 1)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.num_classes == 10 and 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0


def test_npz_and_cifar_loaders_and_their_errors(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, x=rng.integers(0, 255, (30, 12, 12)).astype(np.uint8), y=np.arange(30) % 3)
    splits = load_images(str(good), 8, 0.2)
    assert splits.x_train.shape == (24, 8, 8, 1) and splits.num_classes == 3 and splits.x_train.max() <= 1.0

    missing_key = tmp_path / "nokey.npz"
    np.savez(missing_key, images=np.zeros((4, 8, 8)))
    with pytest.raises(DataError, match="must hold arrays 'x'"):
        load_images(str(missing_key), 0, 0.2)
    not_zip = tmp_path / "broken.npz"
    not_zip.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_images(str(not_zip), 0, 0.2)
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, x=np.zeros((4, 8)), y=np.zeros(4, int))
    with pytest.raises(DataError, match="expected x"):
        load_images(str(bad_shape), 0, 0.2)

    records = np.concatenate([np.arange(10, dtype=np.uint8)[:, None], rng.integers(0, 255, (10, 3072)).astype(np.uint8)], axis=1)
    cifar_dir = tmp_path / "cifar"
    cifar_dir.mkdir()
    records.tofile(cifar_dir / "data_batch_1.bin")
    splits = load_images(str(cifar_dir), 0, 0.2)  # no test_batch.bin: a fixed 20 % is the test split
    assert splits.x_train.shape == (8, 32, 32, 3) and splits.num_classes == 10
    records[7:].tofile(cifar_dir / "test_batch.bin")
    splits = load_images(str(cifar_dir), 0, 0.2)
    assert splits.x_train.shape == (10, 32, 32, 3) and splits.y_test.tolist() == [7, 8, 9]
    (tmp_path / "torn.bin").write_bytes(records.tobytes()[:-5])
    with pytest.raises(DataError, match="not a CIFAR-10 binary batch"):
        load_images(str(tmp_path / "torn.bin"), 0, 0.2)
    # CIFAR-10 "python" batches: pickled dicts of b"data" [N, 3072] uint8 and b"labels" (written here
    # in that format); a pickle naming any other global is refused before it can run.
    import pickle

    py_dir = tmp_path / "cifar-10-batches-py"
    py_dir.mkdir()
    for name, rows in (("data_batch_1", records[:6]), ("test_batch", records[6:])):
        with open(py_dir / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"labels": [int(v) for v in rows[:, 0]], b"data": rows[:, 1:].copy()}, f, protocol=2)
    splits = load_images(str(py_dir), 0, 0.2)
    # the shipped split is kept: data_batch_* train (in a fixed shuffled order), test_batch test (in file order)
    assert splits.x_train.shape == (6, 32, 32, 3) and splits.num_classes == 10
    assert sorted(splits.y_train.tolist()) == list(range(6)) and splits.y_test.tolist() == [6, 7, 8, 9]
    np.testing.assert_allclose(splits.x_test[0], records[6, 1:].reshape(3, 32, 32).transpose(1, 2, 0) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(np.sort(np.concatenate([splits.x_train, splits.x_test]).ravel()),
                               np.sort(records[:, 1:].ravel() / 255.0), rtol=1e-6)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    with open(tmp_path / "data_batch_9", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch .*not allowed"):
        load_images(str(tmp_path / "data_batch_9"), 0, 0.2)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_images(str(tmp_path / "test_batch"), 0, 0.2)

    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown image format; valid: .npz"):
        load_images(str(tmp_path / "x.csv"), 0, 0.2)


def test_too_many_classes_for_the_head_is_a_clear_error(tmp_path):
    path = tmp_path / "many.npz"
    np.savez(path, x=np.zeros((40, 8, 8)), y=np.arange(40) % 12)
    with pytest.raises(DataError, match="12 classes but model.num_classes=10"):
        train_and_evaluate(tiny_config("mlp", data__path=str(path)), str(tmp_path / "run"), progress=False, echo=lambda *a: None)


def test_mlp_learns_digits_in_a_short_run(tmp_path):
    config = tiny_config("mlp", train__steps=200, train__batch_size=32, train__learning_rate="3e-3", train__eval_batches=0,
                         checkpoint__every=100, parallel__mesh="data:2")
    summary = train_and_evaluate(config, str(tmp_path), progress=False, echo=lambda *a: None)
    assert summary["eval"]["accuracy"] > 0.9
    assert "sample" not in summary


def _resnet(depth, width=2):
    config = tiny_config(f"resnet{depth}", model__width=str(width), data__image_size="8")
    module = get_model_spec(f"resnet{depth}").make_module(config.model)
    x = jnp.asarray(np.random.default_rng(0).random((4, 8, 8, 1)), jnp.float32)
    variables = nn.meta.unbox(module.init(jax.random.PRNGKey(0), x))
    return module, x, variables


def test_resnet18_shape_and_parameter_count():
    module, x, variables = _resnet(18)
    assert module.apply(variables, x).shape == (4, 10)
    conv = lambda k, cin, cout: k * k * cin * cout
    basic = lambda cin, cout: conv(3, cin, cout) + conv(3, cout, cout) + 4 * cout + ((conv(1, cin, cout) + 2 * cout) if cin != cout else 0)
    expected = conv(3, 1, 2) + 4
    for cin, cout in ((2, 2), (2, 4), (4, 8), (8, 16)):
        expected += basic(cin, cout) + basic(cout, cout)
    expected += 16 * 10 + 10
    assert param_count(variables["params"]) == expected == 11384
    assert set(variables) == {"params", "batch_stats"}


@pytest.mark.parametrize("depth", [34, 50])
def test_deeper_resnets_have_their_stage_layout(depth):
    module, x, variables = _resnet(depth)
    assert module.apply(variables, x).shape == (4, 10)
    blocks = [k for k in variables["params"] if k.startswith("stage")]
    assert len(blocks) == 16 and "stage4_block3" in blocks
    last = variables["params"]["stage4_block3"]
    assert ("conv3" in last) == (depth == 50)  # bottleneck blocks only in ResNet-50
    assert variables["params"]["head"]["kernel"].shape[0] == (16 * 4 if depth == 50 else 16)


def test_batchnorm_statistics_update_in_training_and_freeze_in_eval():
    module, x, variables = _resnet(18)
    task = get_task("classification")
    batch = {"inputs": x * 3 + 1, "labels": jnp.arange(4)}
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    _, (_, trained_state) = task.loss_fn(module, params, model_state, batch, jax.random.PRNGKey(0), True)
    _, (_, eval_state) = task.loss_fn(module, params, model_state, batch, jax.random.PRNGKey(0), False)
    before = jax.tree.leaves(model_state)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(trained_state), before))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(eval_state), before))
    # eval uses the running statistics: the output does not depend on the rest of the batch
    single = module.apply(variables, batch["inputs"][:1])
    np.testing.assert_allclose(module.apply(variables, batch["inputs"])[:1], single, atol=1e-5)


def test_batchnorm_state_is_checkpointed_and_restored(tmp_path):
    from archlab.train.workdir import restore_params

    config = tiny_config("resnet18", model__width="2", data__image_size="8", train__steps=4, checkpoint__every=4, parallel__mesh="data:1")
    train_and_evaluate(config, str(tmp_path), progress=False, echo=lambda *a: None)
    _, _, model_state, step = restore_params(str(tmp_path), notify=lambda m: None)
    assert step == 4 and "batch_stats" in model_state
    means = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(model_state) if "mean" in jax.tree_util.keystr(path)]
    assert means and any(np.abs(m).sum() > 0 for m in means)  # moved away from the zero init


def test_restore_uses_the_shape_the_run_was_trained_on(tmp_path):
    from archlab.train.workdir import restore_params

    path = tmp_path / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((40, 12, 12, 3)).astype(np.float32), y=np.arange(40) % 10)
    config = tiny_config("cnn", model__channels="4,8", model__dense="16", data__path=str(path), data__image_size="0",
                         train__steps=2, checkpoint__every=2, parallel__mesh="data:1")
    train_and_evaluate(config, str(tmp_path / "run"), progress=False, echo=lambda *a: None)
    _, params, _, step = restore_params(str(tmp_path / "run"), notify=lambda m: None)
    assert step == 2 and params["conv_0"]["kernel"].shape == (3, 3, 3, 4) and params["dense"]["kernel"].shape == (3 * 3 * 8, 16)

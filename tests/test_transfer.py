"""Transfer learning (train.init_from, train.freeze_backbone) and the data subsets it uses
(data.classes, data.train_examples)."""

import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from archlab.arch import get_model_spec
from archlab.train.compiled_run import Run
from archlab.train.config import ConfigError
from archlab.train.data import DataError, make_dataset
from archlab.train.data.images import ImageSplits, first_train_images, hold_out_validation, parse_classes, select_classes
from archlab.train.loop import train_and_evaluate
from archlab.train.state import init_train_state
from archlab.train.transfer import TransferError
from archlab.train.workdir import restore_params

from conftest import assert_one_line_error, run_cli, tiny_config

SMALL_CNN = dict(model__channels="4,8", model__dense="16", data__image_size="0", train__warmup_steps="1")
quiet = dict(progress=False, echo=lambda *a: None)


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def _backbone(tree) -> dict:
    return {k: v for k, v in _flat(tree).items() if not k.startswith("['head']")}


def test_parse_classes():
    assert parse_classes("0-4") == (0, 1, 2, 3, 4)
    assert parse_classes("7, 1,3-4") == (1, 3, 4, 7)
    for bad in ("5", "4-2", "a-b", "-1-3", "", "3,3"):
        with pytest.raises(ValueError, match="data.classes must name at least 2 labels"):
            parse_classes(bad)


def test_select_classes_relabels_and_keeps_the_fixed_split():
    y_train, y_test = np.array([0, 5, 6, 9, 5, 1]), np.array([6, 2, 5, 9])
    images = ImageSplits(y_train[:, None].astype(np.float32), y_train, y_test[:, None].astype(np.float32), y_test, 10, "toy")
    subset = select_classes(images, "5-6,9")
    np.testing.assert_array_equal(subset.y_train, [0, 1, 2, 0])
    np.testing.assert_array_equal(subset.x_train[:, 0], [5, 6, 9, 5])  # the images travel with their labels
    np.testing.assert_array_equal(subset.y_test, [1, 0, 2])
    np.testing.assert_array_equal(subset.x_test[:, 0], [6, 5, 9])
    assert subset.num_classes == 3
    with pytest.raises(DataError, match=r"names labels \[12\]"):
        select_classes(images, "9,12")


def test_data_classes_sets_the_head_size_unless_given():
    assert tiny_config("cnn", data__classes="0-4").model.num_classes == 5
    assert tiny_config("cnn", data__classes="0-4", model__num_classes="10").model.num_classes == 10
    with pytest.raises(ConfigError, match="data.classes"):
        tiny_config("cnn", data__classes="4-0")


def test_first_train_images_keeps_the_head_of_the_train_split_and_every_test_image():
    y_train, y_test = np.arange(6), np.array([7, 8])
    images = ImageSplits(y_train[:, None].astype(np.float32), y_train, y_test[:, None].astype(np.float32), y_test, 10, "toy")
    assert first_train_images(images, 0) is images
    subset = first_train_images(images, 4)
    np.testing.assert_array_equal(subset.y_train, [0, 1, 2, 3])
    np.testing.assert_array_equal(subset.x_train[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(subset.y_test, y_test)
    assert "first 4 training images" in subset.source
    with pytest.raises(DataError, match=r"data.train_examples=7 but the training split has 6 images; use 1..6 or 0 for all"):
        first_train_images(images, 7)


def test_validation_is_the_tail_of_the_train_split_and_the_test_split_is_untouched():
    y_train, y_test = np.arange(6), np.array([7, 8])
    images = ImageSplits(y_train[:, None].astype(np.float32), y_train, y_test[:, None].astype(np.float32), y_test, 10, "toy")
    assert hold_out_validation(images, 0) == (images, None)
    rest, (x_val, y_val) = hold_out_validation(images, 2)
    np.testing.assert_array_equal(y_val, [4, 5])
    np.testing.assert_array_equal(x_val[:, 0], [4, 5])
    np.testing.assert_array_equal(rest.y_train, [0, 1, 2, 3])
    np.testing.assert_array_equal(rest.y_test, y_test)
    with pytest.raises(DataError, match=r"data.validation_examples=6 leaves no training images \(the training split has 6\); use 1..5"):
        hold_out_validation(images, 6)
    with pytest.raises(DataError, match=r"data.train_examples=5 but the training split has 4 images after data.validation_examples=2"):
        first_train_images(rest, 5, held_out=2)


def test_data_validation_examples_gives_validation_then_test():
    full = make_dataset("classification", tiny_config("mlp", train__eval_batches="0"))
    split = make_dataset("classification", tiny_config("mlp", train__eval_batches="0", data__validation_examples="200", data__train_examples="300"))
    assert (split.held_out_name, full.held_out_name, full.test_batches) == ("validation", "test", None)
    inputs = full.train.arrays["inputs"]
    np.testing.assert_array_equal(split.train.arrays["inputs"], inputs[:300])
    validation = np.concatenate([b["inputs"][np.asarray(w) > 0] for b, w in split.eval_batches])
    np.testing.assert_array_equal(validation, inputs[-200:])  # disjoint from the 300 training images
    for (a, a_mask), (b, b_mask) in zip(full.eval_batches, split.test_batches, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a_mask, b_mask)
    assert "300 train / 200 validation / 359 test" in split.description
    with pytest.raises(ConfigError, match="data.validation_examples must be >= 0"):
        tiny_config("mlp", data__validation_examples="-2")


@pytest.mark.parametrize("model, task, overrides", [
    ("dehaze", "restoration", {}),
    ("gan", "gan", {"data__dataset": "digits"}),
])
def test_train_examples_applies_to_every_image_dataset(model, task, overrides):
    data = make_dataset(task, tiny_config(model, data__train_examples="100", **overrides))
    assert data.train.size == 100 and "first 100 training images" in data.source


@pytest.mark.parametrize("model, option, data_name", [
    ("transformer", "train_examples", "corpus"),
    ("gru_classifier", "validation_examples", "topics"),
    ("gan", "validation_examples", "ring"),
    ("gru_classifier", "classes", "topics"),
    ("transformer", "classes", "corpus"),
])
def test_subset_options_on_other_data_are_refused(model, option, data_name):
    config = tiny_config(model, **{f"data__{option}": "0-3" if option == "classes" else "10"})
    with pytest.raises(DataError, match=rf"data.{option} is read only by the .*; this run's data is '{data_name}'"):
        make_dataset(get_model_spec(model).task, config)


def test_data_train_examples_shrinks_training_only():
    full = make_dataset("classification", tiny_config("mlp"))
    part = make_dataset("classification", tiny_config("mlp", data__train_examples="100"))
    assert (full.train.size, part.train.size) == (1438, 100)
    np.testing.assert_array_equal(part.train.arrays["inputs"], full.train.arrays["inputs"][:100])
    # the same held-out images, so runs with different amounts of training data compare directly
    for (a, a_mask), (b, b_mask) in zip(full.eval_batches, part.eval_batches, strict=True):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a_mask, b_mask)
    with pytest.raises(ConfigError, match="data.train_examples must be >= 0"):
        tiny_config("mlp", data__train_examples="-1")


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    """A tiny CNN trained on digits 0-4 (5-way head)."""
    workdir = str(tmp_path_factory.mktemp("source"))
    train_and_evaluate(tiny_config("cnn", **SMALL_CNN, data__classes="0-4", train__steps=4, checkpoint__every=4), workdir, **quiet)
    return workdir


def test_init_copies_the_backbone_and_replaces_the_head(source_dir):
    _, source, _, _ = restore_params(source_dir, notify=lambda *a: None)
    three_way = Run(tiny_config("cnn", **SMALL_CNN, data__classes="5-7", train__init_from=source_dir))
    assert three_way.init_source.replace_head and "head re-initialised" in three_way.init_source.reason
    params = three_way.init_state(0).params
    assert params["head"]["kernel"].shape == (16, 3)
    backbone = _backbone(params)
    assert backbone.keys() == _backbone(source).keys()
    for name, value in _backbone(source).items():
        np.testing.assert_array_equal(backbone[name], value, err_msg=name)
    same = Run(tiny_config("cnn", **SMALL_CNN, data__classes="0-4", train__init_from=source_dir))
    assert not same.init_source.replace_head and "head kept" in same.init_source.reason


def test_frozen_backbone_stays_bitwise_equal_while_the_head_trains(source_dir, tmp_path):
    _, source, _, _ = restore_params(source_dir, notify=lambda *a: None)
    config = tiny_config("cnn", **SMALL_CNN, data__classes="5-9", train__init_from=source_dir, train__freeze_backbone="true",
                         train__steps=4, train__learning_rate="0.01", train__weight_decay="0.1")
    module = get_model_spec("cnn").make_module(config.model)
    fresh = init_train_state(module, optax.identity(), np.zeros((1, 8, 8, 1), np.float32), jax.random.PRNGKey(config.seed))
    fresh_head = np.asarray(nn.meta.unbox(fresh.params)["head"]["kernel"])
    summary = train_and_evaluate(config, str(tmp_path), **quiet)
    assert summary["step"] == 4
    _, tuned, _, step = restore_params(str(tmp_path), notify=lambda *a: None)
    assert step == 4
    for name, value in _backbone(source).items():
        np.testing.assert_array_equal(_backbone(tuned)[name], value, err_msg=name)
    # Same number of classes but other labels: the head is re-initialised (its rows meant other digits), then trains.
    assert not np.array_equal(np.asarray(tuned["head"]["kernel"]), np.asarray(source["head"]["kernel"]))
    assert np.abs(np.asarray(tuned["head"]["kernel"]) - fresh_head).max() > 1e-4


def test_incompatible_params_are_named_with_both_shapes(source_dir):
    with pytest.raises(TransferError, match=r"param conv_0/bias is \(4,\) in the source run but \(6,\) in this model; only the head may differ"):
        Run(tiny_config("cnn", **{**SMALL_CNN, "model__channels": "6,8"}, data__classes="5-9", train__init_from=source_dir))
    with pytest.raises(TransferError, match=r"the source run has param conv_0/bias \(4,\) that this model lacks"):
        Run(tiny_config("mlp", model__hidden="16", data__image_size="0", train__init_from=source_dir))


def test_freeze_needs_a_head():
    with pytest.raises(TransferError, match="has no 'head' module"):
        Run(tiny_config("transformer", train__freeze_backbone="true"))


def test_cli_bad_inputs_are_one_line(source_dir, tmp_path):
    proc = run_cli("launch.train", "--model=cnn", f"--workdir={tmp_path / 'a'}", f"--config.train.init_from={tmp_path / 'nowhere'}")
    assert_one_line_error(proc, "train.init_from", "does not exist")
    proc = run_cli("launch.train", "--model=cnn", f"--workdir={tmp_path / 'b'}", "--config.model.channels=4,9", "--config.model.dense=16",
                   "--config.data.image_size=0", f"--config.train.init_from={source_dir}")
    assert_one_line_error(proc, "train.init_from", "param conv_1/bias is (8,) in the source run but (9,) in this model")
    assert not os.path.exists(tmp_path / "b" / "checkpoints")

"""Labels a classifier cannot learn (negative, or not below model.num_classes) in a user's .npz or
CIFAR-10 batches: refused in one stderr line naming the file, the bad labels and the valid range,
exit 2, before anything trains (they used to train silently: a negative label indexes the logits
from the end)."""

import os
import pickle

import numpy as np
import pytest

from archlab.train.data import DataError, make_dataset
from archlab.train.data.images import load_images

from conftest import assert_one_line_error, run_cli, tiny_config

MLP = ["--model=mlp", "--config.model.hidden=16", "--config.train.batch_size=8", "--config.train.steps=2",
       "--config.train.eval_every=100", "--no_progress"]


def _npz(path, labels):
    labels = np.asarray(labels)
    x = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8)).astype(np.uint8)
    np.savez(path, x=x, y=labels)
    return str(path)


def _cifar_records(labels):
    labels = np.asarray(labels, np.uint8)
    pixels = np.random.default_rng(0).integers(0, 255, (len(labels), 3072)).astype(np.uint8)
    return np.concatenate([labels[:, None], pixels], axis=1)


def _cifar_python(path, labels):
    rows = _cifar_records(np.zeros(len(labels)))
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"x", b"labels": [int(v) for v in labels], b"data": rows[:, 1:].copy()}, f, protocol=2)


def _train(tmp_path, data_path, *extra):
    workdir = tmp_path / "run"
    proc = run_cli("launch.train", f"--workdir={workdir}", *MLP, f"--config.data.path={data_path}", *extra, timeout=240)
    assert not (workdir / "metrics.jsonl").exists(), "it trained"
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints"), "it saved a checkpoint"
    return proc


def test_negative_npz_labels_are_refused_in_one_line(tmp_path):
    path = _npz(tmp_path / "neg.npz", [-3, -1] + [i % 10 for i in range(38)])
    proc = _train(tmp_path, path)
    assert_one_line_error(proc, "neg.npz", "-3, -1", "[0, 10)")


def test_npz_labels_beyond_the_heads_classes_are_refused_in_one_line(tmp_path):
    path = _npz(tmp_path / "twelve.npz", np.arange(40) % 13)  # labels 0..12, a 10-class head
    proc = _train(tmp_path, path)
    assert_one_line_error(proc, "twelve.npz", "10, 11, 12", "[0, 10)", "model.num_classes=10")
    # The same file is fine once the head has room for its labels.
    splits = make_dataset("classification", tiny_config("mlp", data__path=path, model__num_classes=13))
    assert splits.num_classes == 13


def test_cifar_binary_label_byte_out_of_range_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    _cifar_records(np.arange(10)).tofile(folder / "data_batch_1.bin")
    _cifar_records([0, 1, 12, 2, 200, 3]).tofile(folder / "data_batch_2.bin")
    proc = _train(tmp_path, folder)
    assert_one_line_error(proc, "data_batch_2.bin", "12, 200", "[0, 10)")


@pytest.mark.parametrize("bad", [[-1], [10, 11]])
def test_cifar_python_labels_out_of_range_are_refused_in_one_line(tmp_path, bad):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _cifar_python(folder / "data_batch_1", list(range(10)))
    _cifar_python(folder / "test_batch", [0, 1, 2] + bad)
    with pytest.raises(DataError) as info:
        load_images(str(folder), 0, 0.2)
    message = str(info.value)
    assert "test_batch" in message and ", ".join(map(str, bad)) in message and "[0, 10)" in message, message


def test_cifar_python_negative_label_through_the_cli(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    _cifar_python(folder / "data_batch_1", list(range(10)) + [-1])
    assert_one_line_error(_train(tmp_path, folder), "data_batch_1", "-1", "[0, 10)")


def test_a_head_smaller_than_cifar_is_refused_with_the_range(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    _cifar_records(np.arange(20) % 10).tofile(folder / "data_batch_1.bin")
    with pytest.raises(DataError, match=r"label\(s\) 5, 6, 7, 8, 9 outside the valid range \[0, 5\).*model.num_classes=5"):
        make_dataset("classification", tiny_config("mlp", data__path=str(folder), model__num_classes=5))


def test_negative_labels_are_refused_even_when_data_classes_relabels(tmp_path):
    # data.classes picks labels by value; a negative label would index its lookup table from the end.
    path = _npz(tmp_path / "neg.npz", [-1] + [i % 4 for i in range(39)])
    with pytest.raises(DataError, match=r"'.*neg.npz' has label\(s\) -1 outside the valid range \[0, num_classes\)"):
        make_dataset("classification", tiny_config("mlp", data__path=path, data__classes="0-3"))


def test_valid_labels_and_label_free_tasks_still_load(tmp_path):
    path = _npz(tmp_path / "ok.npz", np.arange(40) % 10)
    assert make_dataset("classification", tiny_config("mlp", data__path=path)).num_classes == 10
    # The restoration task never reads labels: a negative one is not its business.
    assert len(load_images(_npz(tmp_path / "neg.npz", [-1] * 40), 0, 0.2).x_train) == 32

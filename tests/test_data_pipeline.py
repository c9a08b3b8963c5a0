"""The grain input side: streamed image sources through make_dataset, real CIFAR-10 splits,
exact resume of the grain iterator (also with worker processes), normalisation, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from archlab.train.data import DataError, make_dataset
from archlab.train.data.image_folder import decode_image
from archlab.train.data.images import load_images
from archlab.train.data.pipeline import TrainStream, array_stream
from archlab.train.data.records import image_example, write_array_record, write_tfrecord
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _examples(n: int, rng, offset: int = 0) -> list[dict]:
    """PNG images whose brightness encodes the label (4 classes), 12x12 RGB; label = (i + offset) % 4."""
    out = []
    for i in range(n):
        label = (i + offset) % 4
        image = np.full((12, 12, 3), 50 * label, np.uint8) + rng.integers(0, 30, (12, 12, 3), dtype=np.uint8)
        out.append(image_example(image, label, encoding="png"))
    return out


def _image_config(path, **overrides):
    values = dict(data__path=str(path), data__image_size="8", model__num_classes="4", train__batch_size="8")
    values.update(overrides)
    return tiny_config("cnn", **values)


@pytest.mark.parametrize("writer,ext", [(write_tfrecord, "tfrecord"), (write_array_record, "array_record")])
def test_record_files_stream_with_their_shipped_test_split(tmp_path, writer, ext):
    rng = np.random.default_rng(0)
    writer(str(tmp_path / f"toy-train.{ext}-00000-of-00001"), _examples(40, rng))
    writer(str(tmp_path / f"toy-test.{ext}-00000-of-00001"), _examples(12, rng, offset=1))
    data = make_dataset("classification", _image_config(tmp_path))
    assert data.held_out_name == "test" and data.num_classes == 4
    assert "40 train / 12 test" in data.description and "shipped test split" in data.source
    batch = data.train.batch_at(0)
    assert batch["inputs"].shape == (8, 8, 8, 3) and batch["inputs"].dtype == np.float32
    # normalised per channel on the training split (auto: on for files)
    whole = np.concatenate([data.train.batch_at(i)["inputs"] for i in range(5)])  # one epoch: 5 batches of 8
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1.0) < 0.1
    # the test split is the shipped file, in order (label = (i + 1) % 4), the last batch zero-padded
    test_labels = np.concatenate([b["labels"][w > 0] for b, w in data.eval_batches])
    assert test_labels.tolist() == [(i + 1) % 4 for i in range(12)] and len(data.eval_batches) == 2
    # one epoch visits every training record once
    assert sorted(np.concatenate([data.train.batch_at(i)["labels"] for i in range(5)]).tolist()) == sorted([i % 4 for i in range(40)])


def test_image_folder_without_a_test_dir_holds_out_a_fixed_fraction_and_validation_comes_from_train(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for label, name in enumerate(("ant", "bee", "cat", "dog")):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.fromarray(np.full((10, 14, 3), 60 * label, np.uint8) + rng.integers(0, 20, (10, 14, 3), dtype=np.uint8)).save(
                tmp_path / name / f"{i}.png")
    config = _image_config(tmp_path, data__val_fraction="0.25", data__validation_examples="6", data__normalize="off")
    data = make_dataset("classification", config)
    assert "24 train / 6 validation / 10 test" in data.description and data.held_out_name == "validation"
    assert data.test_batches is not None
    again = make_dataset("classification", config)  # the split is fixed: the same test images every time
    first = lambda d: np.concatenate([b["inputs"][w > 0] for b, w in d.test_batches])
    np.testing.assert_array_equal(first(data), first(again))
    assert 0.0 <= data.train.batch_at(0)["inputs"].min() and data.train.batch_at(0)["inputs"].max() <= 1.0


def test_streamed_labels_outside_the_head_are_refused_in_one_line(tmp_path):
    write_tfrecord(str(tmp_path / "toy-train.tfrecord"), _examples(16, np.random.default_rng(0)))
    with pytest.raises(DataError, match=r"label\(s\) 3 outside the valid range \[0, 3\)"):  # seen while building (the sample)
        make_dataset("classification", _image_config(tmp_path, model__num_classes="3"))


def test_cifar10_keeps_its_official_split_exactly(tmp_path):
    """Five data batches of 10,000 train, test_batch of 10,000 tests: 50,000 / 10,000, never re-split."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (10_000, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (10_000, 3072), dtype=np.uint8)
        if name == "test_batch.bin":
            labels[:] = 7  # marks the test images
            test_pixels = pixels
        np.concatenate([labels, pixels], axis=1).tofile(tmp_path / name)
    splits = load_images(str(tmp_path), 0, 0.2)
    assert splits.x_train.shape == (50_000, 32, 32, 3) and splits.x_test.shape == (10_000, 32, 32, 3)
    assert (splits.y_test == 7).all() and (splits.y_train == 7).mean() < 0.2
    np.testing.assert_allclose(splits.x_test[3], test_pixels[3].reshape(3, 32, 32).transpose(1, 2, 0) / 255.0, rtol=1e-6)


def test_grain_iterator_state_resumes_exactly_and_rejects_a_malformed_one():
    arrays = {"inputs": np.arange(30, dtype=np.float32)[:, None], "labels": np.arange(30, dtype=np.int32)}
    stream = array_stream(arrays, 4, seed=3)
    seen = [next(stream)["labels"] for _ in range(9)]  # crosses an epoch (7 batches each)
    state = stream.get_state()
    assert state["position"] == 9 and json.loads(state["grain"]) == {"next_index": 9}
    after = [next(stream)["labels"] for _ in range(3)]
    resumed = array_stream(arrays, 4, seed=3)
    resumed.set_state(state)
    for a, b in zip(after, [next(resumed)["labels"] for _ in range(3)]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(array_stream(arrays, 4, seed=3).batch_at(2)["labels"], seen[2])  # random access
    assert TrainStream.state_problem(state, 9) is None
    assert "step 8" in TrainStream.state_problem(state, 8)
    assert "not valid JSON" in TrainStream.state_problem({"position": 9, "grain": "{"}, 9)


def test_worker_processes_give_the_same_batches_and_resume_exactly(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import numpy as np
        from archlab.train.data.pipeline import array_stream

        def main():
            arrays = {"x": np.arange(64, dtype=np.float32)[:, None]}
            plain = array_stream(arrays, 8, seed=1, workers=0)
            pooled = array_stream(arrays, 8, seed=1, workers=2)
            a = [next(plain)["x"] for _ in range(12)]
            b = [next(pooled)["x"] for _ in range(6)]
            state = pooled.get_state()
            pooled.close()
            again = array_stream(arrays, 8, seed=1, workers=2)
            again.set_state(state)
            b += [next(again)["x"] for _ in range(6)]
            again.close()
            print(json.dumps({"same": all(np.array_equal(x, y) for x, y in zip(a, b)), "state": state["grain"]}))

        if __name__ == "__main__":
            main()
    """))
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"] and "iterators_in_use_states" in result["state"]


@pytest.mark.parametrize("field,value,message", [
    ("data__normalize", "maybe", "data.normalize='maybe'; valid: auto, on, off"),
    ("data__workers", "-1", "data.workers must be >= 0"),
    ("data__format", "parquet", "data.format='parquet'; valid: auto, text, tokens"),
])
def test_bad_pipeline_fields_are_one_line_errors(field, value, message):
    try:
        config = tiny_config("cnn", **{field: value})
    except Exception as e:  # refused already when the config is resolved
        assert message in str(e)
        return
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_dataset("classification", config)


def test_decode_happens_in_the_pipeline_not_up_front(tmp_path, monkeypatch):
    """Building the dataset reads the file index and a statistics sample, not every image."""
    import archlab.train.data.records as records

    write_tfrecord(str(tmp_path / "toy-train.tfrecord"), _examples(64, np.random.default_rng(2)))
    calls = []
    monkeypatch.setattr(records, "decode_image", lambda data, where: calls.append(where) or decode_image(data, where))
    data = make_dataset("classification", _image_config(tmp_path, data__normalize="off"))
    built = len(calls)
    assert built < 64  # the 1-image example input and the 51-image statistics sample at most
    data.train.batch_at(0)
    assert len(calls) == built + 8  # one batch decodes its 8 records


def test_grain_shuffle_order_covers_each_epoch_and_any_process_count_sees_the_same_global_batch():
    from archlab.train.data.pipeline import GrainShuffleOrder, record_stream

    order = GrainShuffleOrder(24, 6, seed=5)
    epochs = [np.concatenate([order(p) for p in range(e * 4, e * 4 + 4)]) for e in range(2)]
    assert all(sorted(e.tolist()) == list(range(24)) for e in epochs) and not np.array_equal(*epochs)
    read = lambda rows: {"i": np.asarray(rows)}
    whole = record_stream(read, 24, 6, seed=5, shuffle="grain").batch_at(7)["i"]
    halves = [record_stream(read, 24, 6, seed=5, shard=s, num_shards=2, shuffle="grain").batch_at(7)["i"] for s in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_sample_top_k_is_checked_against_the_models_vocabulary():
    from archlab.train.config import ConfigError

    assert tiny_config("transformer", model__vocab_size="1024", sample__top_k="500").sample.top_k == 500
    with pytest.raises(ConfigError, match=r"sample.top_k must be in \[0, 1024\]"):
        tiny_config("transformer", model__vocab_size="1024", sample__top_k="2000")

"""Config overrides and the text data pipeline."""

import numpy as np
import pytest

from archlab.arch import UnknownModelError
from archlab.train import data as data_lib
from archlab.train.data import text as text_lib
from archlab.train.config import ConfigError, apply_overrides, get_config


def test_contract_keys_exist_and_overrides_are_typed():
    config = apply_overrides(
        get_config("transformer"),
        {"train.steps": "50", "train.learning_rate": "1e-3", "model.num_layers": "2", "model.tie_embeddings": "false",
         "data.path": "x.txt", "checkpoint.every": "7", "checkpoint.keep": "2", "train.batch_size": "8"},
    )
    assert config.train.steps == 50 and isinstance(config.train.steps, int)
    assert config.train.learning_rate == 1e-3 and config.model.num_layers == 2
    assert config.model.tie_embeddings is False and config.data.path == "x.txt"
    assert (config.checkpoint.every, config.checkpoint.keep, config.train.batch_size) == (7, 2, 8)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.stepz": "5"}, "unknown config key config.train.stepz.*valid: .*steps"),
        ({"nope.steps": "5"}, "unknown config key config.nope.steps.*valid: .*train"),
        ({"train.steps": "ten"}, "bad value for config.train.steps: 'ten' is not a valid int"),
        ({"train.steps": "1.5"}, "not a valid int"),
        ({"model.tie_embeddings": "maybe"}, "not a valid bool"),
        ({"train": "5"}, "is a section"),
        ({"train.batch_size": "10", "train.grad_accum_steps": "4"}, "divisible"),
        ({"model.dtype": "float8"}, "model.dtype must be one of"),
        ({"train.steps": "0"}, "train.steps must be >= 1"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_config("transformer"), overrides)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match="unknown model 'nope'; valid models: .*transformer"):
        get_config("nope")


def test_embedded_corpus_is_split_by_topic_deterministically():
    a, b = text_lib.embedded_text_splits(), text_lib.embedded_text_splits()
    np.testing.assert_array_equal(a.train, b.train)
    assert 300_000 < len(a.train) and 20_000 < len(a.validation) < 0.2 * len(a.train)
    from pydoc_data.topics import topics

    val_topics = [n for n in sorted(topics) if text_lib._is_validation_topic(n)]
    assert val_topics and bytes(a.validation).startswith(topics[val_topics[0]].encode())
    assert topics[val_topics[0]].encode() not in bytes(a.train)


def test_iterator_batches_are_a_pure_function_of_position():
    data = np.arange(1000, dtype=np.uint8)
    it = text_lib.window_stream(data, 4, 16, seed=3, shard=0, num_shards=1)
    first = [next(it)["tokens"] for _ in range(5)]
    assert it.get_state() == {"position": 5, "grain": '{"next_index": 5}'}
    it2 = text_lib.window_stream(data, 4, 16, seed=3, shard=0, num_shards=1)
    it2.set_state({"position": 3, "grain": '{"next_index": 3}'})
    np.testing.assert_array_equal(next(it2)["tokens"], first[3])
    assert first[0].shape == (4, 17) and first[0].dtype == np.int32
    assert (np.diff(first[0], axis=1) % 256 == 1).all()  # contiguous windows
    # two process shards together are the global batch
    halves = [text_lib.window_stream(data, 4, 16, seed=3, shard=i, num_shards=2).batch_at(0)["tokens"] for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), first[0])


def test_eval_windows_predict_each_byte_once():
    data = np.arange(100, dtype=np.uint8)
    batches = text_lib.eval_windows(data, 10, batch_size=4)
    w = np.concatenate([b["tokens"][wt > 0] for b, wt in batches])
    assert len(batches) == 3 and w.shape == (9, 11)
    targets = w[:, 1:].ravel()
    assert len(set(targets.tolist())) == len(targets) == 90


def test_file_loader_errors(tmp_path):
    with pytest.raises(data_lib.DataError, match="does not exist"):
        text_lib.file_text_splits(str(tmp_path / "missing.txt"), 0.1, 33)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(data_lib.DataError, match="is empty"):
        text_lib.file_text_splits(str(empty), 0.1, 33)
    short = tmp_path / "short.txt"
    short.write_bytes(b"hello")
    with pytest.raises(data_lib.DataError, match="need at least"):
        text_lib.file_text_splits(str(short), 0.1, 33)
    good = tmp_path / "good.txt"
    good.write_bytes(bytes(range(256)) * 10)
    splits = text_lib.file_text_splits(str(good), 0.1, 33)
    assert len(splits.train) == 2304 and len(splits.validation) == 256

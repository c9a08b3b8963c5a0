"""Bad data through the CLI, as a user meets it: one line naming the problem, exit 2, nothing lost."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import grain
import numpy as np
import pytest

from tests.conftest import REPO, cli_env
from archlab.train.data.records import image_example, write_tfrecord
from archlab.train.data.tokenizer import ByteTokenizer, pretokenize


def _train(*flags, timeout=300):
    return subprocess.run([sys.executable, "-m", "launch.train", "--no_progress", *flags], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _records(path, n, labels=4):
    write_tfrecord(str(path), [image_example(np.full((8, 8, 3), 20 * (i % labels), np.uint8), i % labels, encoding="png")
                               for i in range(n)])


def _corrupt_payload(path, record: int) -> None:
    """Overwrites the start of record ``record``'s payload (its length header stays valid)."""
    with open(path, "r+b") as f:
        offset = 0
        for _ in range(record):
            f.seek(offset)
            offset += 12 + struct.unpack("<Q", f.read(8))[0] + 4
        f.seek(offset + 12)
        f.write(b"\xff" * 16)


IMAGE_FLAGS = ["--model=cnn", "--config.model.num_classes=4", "--config.data.image_size=8", "--config.train.batch_size=16"]


def test_truncated_record_file(tmp_path):
    path = tmp_path / "toy-train.tfrecord"
    _records(path, 20)
    path.write_bytes(path.read_bytes()[:-7])
    _one_line_error(_train(*IMAGE_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={path}", "--dry_run"), str(path))


def test_a_corrupt_record_met_while_training_stops_the_run_and_keeps_the_checkpoints(tmp_path):
    path = tmp_path / "toy-train.tfrecord"
    _records(path, 1200)
    # The record the 31st step reads first: the fixed split order (image_records._SPLIT_SEED, the last
    # 80 % train: cnn's val_fraction is 0.2), then grain's shuffle (seed 0) of the 960 training records.
    train_records = np.random.default_rng(20_240_601).permutation(1200)[240:]
    bad = int(train_records[grain.MapDataset.range(960).shuffle(seed=0)[30 * 16]])
    _corrupt_payload(path, bad)  # with normalisation off nothing is read up front but one example: it is met in training
    proc = _train(*IMAGE_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={path}", "--config.train.steps=200",
                  "--config.checkpoint.every=5", "--config.train.log_every=5", "--config.data.normalize=off")
    _one_line_error(proc, str(path), f"record {bad}", "not a tf.train.Example")
    saved = sorted(int(name) for name in os.listdir(tmp_path / "w" / "checkpoints") if name.isdigit())
    assert saved and saved[-1] == 30  # the steps before it were saved and stay
    again = _train(*IMAGE_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={path}", "--config.train.steps=200",
                   "--config.checkpoint.every=5", "--config.data.normalize=off")
    assert f"resuming from step {saved[-1]}" in again.stdout + again.stderr


def test_missing_split_files(tmp_path):
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "test_batch.bin").write_bytes(bytes(3073))
    _one_line_error(_train(*IMAGE_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={tmp_path / 'cifar'}", "--dry_run"),
                    "no CIFAR-10 training batches")
    (tmp_path / "empty").mkdir()
    _one_line_error(_train(*IMAGE_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={tmp_path / 'empty'}",
                           "--config.data.format=tfrecord", "--dry_run"), str(tmp_path / "empty"))


def test_labels_outside_the_head(tmp_path):
    path = tmp_path / "toy-train.tfrecord"
    _records(path, 24)
    proc = _train(*IMAGE_FLAGS[:1], "--config.model.num_classes=3", "--config.data.image_size=8", f"--workdir={tmp_path / 'w'}",
                  f"--config.data.path={path}", "--dry_run")
    _one_line_error(proc, "label(s) 3 outside the valid range [0, 3)")


@pytest.fixture(scope="module")
def byte_tokens(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokens")
    text = folder / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    out = folder / "corpus.bin"
    pretokenize(str(text), ByteTokenizer(), str(out), "uint16")
    return out


LM_FLAGS = ["--model=transformer", "--config.data.format=tokens", "--config.data.seq_len=32", "--config.model.max_len=32"]


def test_a_token_file_of_the_wrong_dtype_or_size(tmp_path, byte_tokens):
    proc = _train(*LM_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={byte_tokens}", "--config.data.token_dtype=uint32",
                  "--dry_run")
    _one_line_error(proc, "uint16", "data.token_dtype=uint32")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(np.arange(1001, dtype="<u2").tobytes()[:-1])
    _one_line_error(_train(*LM_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={odd}", "--dry_run"), "not a multiple")


def test_a_tokenizer_that_does_not_match_the_tokens(tmp_path, byte_tokens):
    pytest.importorskip("sentencepiece")
    from archlab.train.data.tokenizer import train_sentencepiece

    text = tmp_path / "t.txt"
    text.write_text("".join(f"line {i} of some text, with words that repeat and repeat\n" for i in range(2000)))
    model = train_sentencepiece(str(text), 300, str(tmp_path / "sp"))
    proc = _train(*LM_FLAGS, f"--workdir={tmp_path / 'w'}", f"--config.data.path={byte_tokens}", "--config.data.tokenizer=sentencepiece",
                  f"--config.data.tokenizer_model={model}", "--config.model.vocab_size=300", "--dry_run")
    _one_line_error(proc, "bytes tokenizer", "data.tokenizer=sentencepiece")
    meta = json.load(open(str(byte_tokens) + ".json"))
    assert meta["tokenizer"] == "bytes" and os.path.exists(byte_tokens)  # nothing of the data was touched

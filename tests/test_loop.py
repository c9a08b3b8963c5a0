"""The training loop in-process: kill-and-resume equality and sharded-vs-single-device equality."""

import json
import os

import jax
import numpy as np

from archlab.train.loop import train_and_evaluate
from archlab.train.workdir import restore_params

from conftest import tiny_config


def _params(workdir):
    _, params, _, step = restore_params(str(workdir), notify=lambda m: None)
    return params, step


def _params_at(workdir, step):
    from archlab.train.checkpoint import Checkpointer
    from archlab.train.compiled_run import Run

    config = tiny_config(parallel__mesh="data:1")
    run = Run(config)
    checkpointer = Checkpointer(str(workdir / "checkpoints"), keep=10)
    state, data_state = checkpointer.restore(step, run.abstract_state)
    checkpointer.close()
    return state.params, data_state


def test_kill_and_resume_gives_bitwise_identical_params(tmp_path):
    config = tiny_config(train__steps=8, checkpoint__every=100, parallel__mesh="data:2")
    straight = train_and_evaluate(config, str(tmp_path / "straight"), progress=False, echo=lambda *a: None)
    assert straight["step"] == 8 and not straight["interrupted"]

    first = train_and_evaluate(config, str(tmp_path / "resumed"), stop_at_step=4, progress=False, echo=lambda *a: None)
    assert first["interrupted"] and first["step"] == 4
    assert _params(tmp_path / "resumed")[1] == 4
    messages = []
    second = train_and_evaluate(config, str(tmp_path / "resumed"), progress=False, echo=messages.append)
    assert second["step"] == 8 and any("resuming from step 4" in m for m in messages)

    a, step_a = _params(tmp_path / "straight")
    b, step_b = _params(tmp_path / "resumed")
    assert step_a == step_b == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    # the resumed run's log has each step once, and the same final eval
    steps = [(r["step"], r["split"]) for r in map(json.loads, open(tmp_path / "resumed" / "metrics.jsonl"))]
    assert len(steps) == len(set(steps))
    assert second["eval"] == straight["eval"]


def test_checkpoint_mid_run_holds_that_step_despite_donation(tmp_path):
    """Async saves must capture step k, not the buffers the donated step k+1 overwrites."""
    straight = tiny_config(train__steps=6, checkpoint__every=2, checkpoint__keep=5, parallel__mesh="data:1")
    train_and_evaluate(straight, str(tmp_path / "straight"), progress=False, echo=lambda *a: None)
    stopped = tiny_config(train__steps=6, checkpoint__every=100, parallel__mesh="data:1")
    train_and_evaluate(stopped, str(tmp_path / "stopped"), stop_at_step=4, progress=False, echo=lambda *a: None)
    a, data_a = _params_at(tmp_path / "straight", 4)
    b, data_b = _params_at(tmp_path / "stopped", 4)
    assert data_a == data_b and data_a["position"] == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_sharded_run_matches_single_device(tmp_path):
    assert jax.device_count() == 8
    single = train_and_evaluate(tiny_config(train__steps=6, parallel__mesh="data:1"), str(tmp_path / "one"), progress=False, echo=lambda *a: None)
    sharded = train_and_evaluate(tiny_config(train__steps=6, parallel__mesh="data:4,model:2"), str(tmp_path / "eight"), progress=False, echo=lambda *a: None)
    info = json.load(open(tmp_path / "eight" / "config.json"))
    assert info["mesh"] == {"data": 4, "model": 2} and info["device_count"] == 8
    a, _ = _params(tmp_path / "one")
    b, _ = _params(tmp_path / "eight")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(single["eval"]["loss"], sharded["eval"]["loss"], rtol=1e-5)


def test_workdir_contents(tmp_path):
    summary = train_and_evaluate(tiny_config(train__steps=10, parallel__mesh="data:1"), str(tmp_path), progress=False, echo=lambda *a: None)
    info = json.load(open(tmp_path / "config.json"))
    assert info["config"]["train"]["steps"] == 10 and info["jax"] == jax.__version__ and info["devices"]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {r["split"] for r in records} == {"train", "eval"} and all("loss" in r for r in records)
    assert os.listdir(tmp_path / "checkpoints") == ["10"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    png = tmp_path / "plots" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and summary["plot"] == str(png)
    assert isinstance(summary["sample"], str) and 0 < len(summary["sample"]) <= 16  # 16 bytes, decoded as UTF-8

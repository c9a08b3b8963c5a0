"""Parallelism: one train step on 1 device, a sharded mesh, pmap and several processes.

Equality tolerance: f32 losses and params after a few steps agree with the single-device run to
atol 2e-5 / rtol 1e-5 (sharded reductions sum in a different order; nothing else differs).
"""

import json
import os
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from archlab.train import parallel
from archlab.train.compiled_run import Run
from archlab.train.loop import train_and_evaluate
from archlab.train.workdir import restore_params

from conftest import REPO, cli_env, tiny_cli_flags, tiny_config

STEPS = 3
QUIET = dict(progress=False, echo=lambda *a: None)


def _train(config, steps=STEPS):
    """Per-step losses and the final (params, model_state) on the host, through the loop's own Run."""
    run = Run(config)
    state = run.init_state(config.seed)
    step = run.compile_train_step()
    iterator = run.train_iterator()
    losses = []
    for _ in range(steps):
        state, metrics = step(state, run.place_batch(next(iterator)))
        losses.append(run.host_metrics(metrics)["loss"])
    return np.array(losses), run.host_params(run.to_global(state))


def _assert_trees_close(a, b, atol=2e-5, rtol=1e-5):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=rtol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def single_device_run():
    return _train(tiny_config(model__num_heads="4", parallel__mesh="data:1"))


@pytest.mark.parametrize(
    "layout",
    [dict(parallel__mesh="data:8"), dict(parallel__mesh="fsdp:8"), dict(parallel__mesh="data:2,model:4"),
     dict(parallel__mesh="data:2,fsdp:2,model:2"), dict(parallel__mode="pmap", parallel__mesh="data:-1")],
    ids=["data8", "fsdp8", "data2_model4", "data2_fsdp2_model2", "pmap8"],
)
def test_layout_matches_single_device(layout, single_device_run):
    assert jax.device_count() == 8
    losses, params = _train(tiny_config(model__num_heads="4", **layout))
    reference_losses, reference_params = single_device_run
    np.testing.assert_allclose(losses, reference_losses, atol=2e-5, rtol=1e-5)
    _assert_trees_close(params, reference_params)


def test_layouts_really_shard():
    """The equality above would hold trivially if nothing were split: check that it is."""
    run = Run(tiny_config(model__num_heads="4", parallel__mesh="fsdp:8"))
    state = run.init_state(0)
    kernel = state.params["layer_0"]["mlp"]["wi"]  # [embed=32, mlp=64], embed over fsdp
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert {s.data.shape for s in kernel.addressable_shards} == {(4, 64)}
    moment = jax.tree.leaves(state.opt_state)[1]  # optimizer state is created sharded too
    assert len({s.data.shape for s in moment.addressable_shards}) == 1 and moment.addressable_shards[0].data.size * 8 == moment.size


# PartitionSpecs of the tiny transformer's params (layer_0 stands for every layer) under each rule
# set on a data:2,fsdp:2,model:2 mesh: Megatron splits heads / MLP hidden / vocab over model; FSDP
# splits the embed dimension of every weight over fsdp.
NORMS_OVER_FSDP = {f"{norm}/{p}": ("fsdp",) for norm in ("layer_0/ln_attn", "layer_0/ln_mlp", "ln_final") for p in ("scale", "bias")}
GOLDEN_SHARDINGS = {
    "data_parallel": {},  # everything replicated
    "fsdp": {
        "embed/embedding": (None, "fsdp"), "layer_0/attn/qkv": ("fsdp", None, None, None), "layer_0/attn/out": (None, None, "fsdp"),
        "layer_0/mlp/wi": ("fsdp", None), "layer_0/mlp/bi": (None,), "layer_0/mlp/wo": (None, "fsdp"), "layer_0/mlp/bo": ("fsdp",),
        **NORMS_OVER_FSDP,
    },
    "tensor_parallel": {
        "embed/embedding": ("model", None), "layer_0/attn/qkv": (None, None, "model", None), "layer_0/attn/out": ("model", None, None),
        "layer_0/mlp/wi": (None, "model"), "layer_0/mlp/bi": ("model",), "layer_0/mlp/wo": ("model", None), "layer_0/mlp/bo": (None,),
    },
    "default": {
        "embed/embedding": ("model", "fsdp"), "layer_0/attn/qkv": ("fsdp", None, "model", None),
        "layer_0/attn/out": ("model", None, "fsdp"), "layer_0/mlp/wi": ("fsdp", "model"), "layer_0/mlp/bi": ("model",),
        "layer_0/mlp/wo": ("model", "fsdp"), "layer_0/mlp/bo": ("fsdp",), **NORMS_OVER_FSDP,
    },
}


@pytest.mark.parametrize("rules", sorted(GOLDEN_SHARDINGS))
def test_golden_shardings(rules):
    run = Run(tiny_config(model__num_heads="4", parallel__mesh="data:2,fsdp:2,model:2", parallel__rules=rules))
    specs = {parallel.param_path_name(p): tuple(s.spec) for p, s in jax.tree_util.tree_leaves_with_path(run.state_shardings.params)}
    for name, spec in specs.items():
        expected = GOLDEN_SHARDINGS[rules].get(name.replace("layer_1/", "layer_0/"))
        if expected is None:
            assert all(e is None for e in spec), f"{name} under {rules}: {spec}, expected replicated"
        else:
            assert spec == expected, f"{name} under {rules}: {spec} != {expected}"
    assert set(GOLDEN_SHARDINGS[rules]) <= set(specs)


def test_indivisible_dims_fall_back_to_replicated_with_a_note():
    run = Run(tiny_config(model__num_heads="2", parallel__mesh="data:2,model:4"))  # 2 heads over model:4
    qkv = run.state_shardings.params["layer_0"]["attn"]["qkv"]
    assert tuple(qkv.spec) == (None, None, None, None)
    assert any("layer_0/attn/qkv" in note for note in run.sharding_notes)


def test_startup_report_warns_about_large_replicated_params():
    mesh = parallel.make_mesh("data:4,model:2")
    params = {"big": jax.ShapeDtypeStruct((512, 256), np.float32), "split": jax.ShapeDtypeStruct((512, 256), np.float32)}
    shardings = {"big": parallel.replicated(mesh), "split": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model"))}
    lines, warnings = parallel.sharding_report(params, shardings, mesh, replicated_warn_size=1000)
    assert lines[0].startswith("devices: 8 x cpu") and lines[1] == "mesh: data=4, model=2"
    assert any("split" in line and "'model'" in line for line in lines)
    assert len(warnings) == 1 and "big (512, 256)" in warnings[0] and "split" not in warnings[0]
    _, quiet = parallel.sharding_report(params, shardings, parallel.make_mesh("data:8"), replicated_warn_size=1000)
    assert quiet == []


@pytest.mark.parametrize(
    "spec,devices,message",
    [("data:3,model:2", 8, "mesh data:3,model:2 needs 6 devices, found 8"), ("data:-1,model:3", 8, "does not divide 8 devices"),
     ("data:2,expert:4", 8, "unknown axis 'expert'"), ("data:x", 8, "is not an integer"), ("data:-1,model:-1", 8, "at most one -1")],
)
def test_bad_mesh_specs(spec, devices, message):
    with pytest.raises(parallel.MeshError, match=message):
        parallel.parse_mesh_spec(spec, devices)


def test_mesh_that_does_not_fit_is_one_line_at_the_cli(tmp_path, python):
    proc = subprocess.run(
        [python, "-m", "launch.train", "--model=transformer", f"--workdir={tmp_path}", "--no_progress",
         *tiny_cli_flags(**{"parallel.mesh": "data:3,model:2"})],
        capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: mesh data:3,model:2 needs 6 devices, found 1; use -1 for one axis to "
                                                "take the rest, or parallel.num_devices to use a subset"]
    assert not os.path.exists(tmp_path / "checkpoints")


def test_pmap_rejects_a_model_axis():
    with pytest.raises(parallel.MeshError, match="pmap is data parallel only"):
        Run(tiny_config(parallel__mode="pmap", parallel__mesh="data:4,model:2"))


# ------------------------------------------------------------------------ checkpoints across layouts


def test_checkpoint_reshards_across_layouts_and_modes(tmp_path):
    """Saved on data:8 (and by pmap), resumed on data:2,model:4 and read on 1 device: the same run."""
    straight = tiny_config(model__num_heads="4", train__steps=6, checkpoint__every=100, parallel__mesh="data:1")
    train_and_evaluate(straight, str(tmp_path / "straight"), **QUIET)
    _, reference, _, _ = restore_params(str(tmp_path / "straight"), notify=lambda *a: None)

    for first, then in [(dict(parallel__mesh="data:8"), dict(parallel__mesh="data:2,model:4")),
                        (dict(parallel__mode="pmap", parallel__mesh="data:-1"), dict(parallel__mesh="fsdp:4,model:2"))]:
        workdir = str(tmp_path / "_".join(first.values()).replace(":", ""))
        base = dict(model__num_heads="4", train__steps=6, checkpoint__every=100)
        train_and_evaluate(tiny_config(**base, **first), workdir, stop_at_step=3, **QUIET)
        _, params_at_3, _, step = restore_params(workdir, notify=lambda *a: None)  # on one device
        assert step == 3 and all(isinstance(x, jax.Array) and len(x.devices()) == 1 for x in jax.tree.leaves(params_at_3))
        summary = train_and_evaluate(tiny_config(**base, **then), workdir, **QUIET)
        assert summary["step"] == 6
        _, resumed, _, _ = restore_params(workdir, notify=lambda *a: None)
        _assert_trees_close(resumed, reference)


# ----------------------------------------------------------------------------- multi-process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_env(devices: int) -> dict:
    env = cli_env()
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


MP_FLAGS = dict(**{"train.steps": "6", "checkpoint.every": "3", "train.log_every": "2", "train.eval_every": "4", "model.num_heads": "4"})


def _launch(python, workdir, process_id, port, extra=(), **overrides):
    flags = tiny_cli_flags(**{**MP_FLAGS, **overrides})
    return subprocess.Popen(
        [python, "-m", "launch.train", "--model=transformer", f"--workdir={workdir}", "--no_progress", *flags,
         "--config.parallel.distributed=explicit", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={process_id}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_process_env(2), cwd=REPO,
    )


def _records(workdir, split):
    return [r for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if r["split"] == split]


def test_two_processes_match_one_process_on_four_devices(tmp_path, python):
    port = _free_port()
    procs = [_launch(python, tmp_path / "two", i, port) for i in range(2)]
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "devices: 4 x cpu (2 process(es), 2 local)" in outputs[0]
    assert "validation at step 6" in outputs[0] and "validation at step 6" not in outputs[1]  # only process 0 reports

    single = subprocess.run(
        [python, "-m", "launch.train", "--model=transformer", f"--workdir={tmp_path / 'one'}", "--no_progress",
         *tiny_cli_flags(**MP_FLAGS)],
        capture_output=True, text=True, env=_process_env(4), cwd=REPO, timeout=300,
    )
    assert single.returncode == 0, single.stderr
    two, one = _records(tmp_path / "two", "train"), _records(tmp_path / "one", "train")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [2, 4, 6]
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
    np.testing.assert_allclose(_records(tmp_path / "two", "eval")[-1]["loss"], _records(tmp_path / "one", "eval")[-1]["loss"], rtol=1e-5)
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]  # both processes wrote one orbax checkpoint
    _, params_two, _, _ = restore_params(str(tmp_path / "two"), notify=lambda *a: None)
    _, params_one, _, _ = restore_params(str(tmp_path / "one"), notify=lambda *a: None)
    _assert_trees_close(params_two, params_one)


SURVIVOR_DEADLINE_S = 60  # the stated bound: a survivor exits within this long after its peer dies


@pytest.mark.parametrize("victim", [1, 0], ids=["worker_dies", "coordinator_dies"])
def test_survivor_exits_when_a_process_dies(tmp_path, python, victim):
    port = _free_port()
    overrides = {"train.steps": "100000", "train.log_every": "5", "train.eval_every": "100000", "checkpoint.every": "100000"}
    extra = ["--config.parallel.heartbeat_timeout_s=20"]
    procs = [_launch(python, tmp_path, i, port, extra, **overrides) for i in range(2)]
    try:
        deadline = time.time() + 240
        while not (os.path.exists(tmp_path / "metrics.jsonl") and _records(tmp_path, "train")):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "training did not start"
            time.sleep(1)
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.time()
        survivor = procs[1 - victim]
        output = survivor.communicate(timeout=SURVIVOR_DEADLINE_S + 30)[0]
        waited = time.time() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert survivor.returncode != 0
    assert waited < SURVIVOR_DEADLINE_S, f"survivor took {waited:.0f}s"
    assert "another task died" in output or "peer process" in output, output[-2000:]


def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path, python):
    """Preemption in a multi-process job: JAX's preemption sync point picks one step for everyone."""
    port = _free_port()
    overrides = {"train.steps": "100000", "train.log_every": "5", "train.eval_every": "100000", "checkpoint.every": "100000"}
    procs = [_launch(python, tmp_path, i, port, **overrides) for i in range(2)]
    try:
        deadline = time.time() + 240
        while not (os.path.exists(tmp_path / "metrics.jsonl") and _records(tmp_path, "train")):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "training did not start"
            time.sleep(1)
        procs[1].send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    saved = [int(name) for name in os.listdir(tmp_path / "checkpoints")]
    assert len(saved) == 1 and f"saved checkpoint at step {saved[0]}" in outputs[0]

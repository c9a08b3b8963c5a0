"""Faults that used to lose or corrupt data (NaN state, damaged bytes, two trainers, silent start
over) and the resource faults around a run: each probe is run as a user or a hostile file system
would, and checks that nothing already saved is lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from archlab.train.checkpoint import CHECKSUMS, Checkpointer, first_nonfinite_leaf
from archlab.train.loop import NonFiniteLossError, WorkdirError, train_and_evaluate
from archlab.train.workdir import restore_params

from conftest import REPO, assert_one_line_error, cli_env, run_cli, tiny_cli_flags, tiny_config
from faults_common import MLP, copy_run, largest_file, mlp_run, quiet, read_file, trained_mlp, tree_state  # noqa: F401  (trained_mlp: a fixture)


# ------------------------------------------------------------------------- 1. NaN state


@pytest.mark.parametrize("override", ["train.weight_decay=nan", "train.min_lr_ratio=nan", "train.learning_rate=inf"])
def test_nonfinite_config_values_are_refused_at_parse_time(tmp_path, override):
    proc = run_cli("launch.train", "--model=mlp", f"--workdir={tmp_path / 'w'}", f"--config.{override}")
    assert_one_line_error(proc, f"config.{override.split('=')[0]}", "finite")
    assert not (tmp_path / "w").exists()


def test_nan_parameters_with_a_finite_loss_are_never_checkpointed(tmp_path, monkeypatch):
    # A NaN weight decay passes a finite loss and gradient at step 1 but makes every param NaN:
    # the guard must see the updated params, and no checkpoint may be written. (The config check
    # refuses a NaN up front; it is skipped here so the value reaches the in-loop guard.)
    monkeypatch.setattr("archlab.train.loop.resolve_config", lambda config: config)
    config = tiny_config("mlp", train__steps=4, checkpoint__every=1, train__log_every=2)
    config.unlock()
    config.train.weight_decay = float("nan")
    config.lock()
    with pytest.raises(NonFiniteLossError, match="params/.* became non-finite by step 1;"):
        train_and_evaluate(config, str(tmp_path / "w"), progress=False, echo=quiet)
    assert os.listdir(tmp_path / "w" / "checkpoints") == []


def test_saving_a_nonfinite_state_writes_nothing(tmp_path, trained_mlp):
    from archlab.train.checkpoint import NonFiniteStateError

    config, params, model_state, step = restore_params(str(trained_mlp), notify=quiet)
    bad = jax.tree.map(lambda x: x * np.nan, params)
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), keep=3)
    with pytest.raises(NonFiniteStateError, match="kernel|bias"):
        checkpointer.save(7, {"params": bad}, {"position": 7})
    checkpointer.close()
    assert checkpointer.all_steps() == []
    assert first_nonfinite_leaf({"params": params}) is None
    assert "head" in first_nonfinite_leaf({"params": bad}) or "dense" in first_nonfinite_leaf({"params": bad})


def _save_raw_step(workdir, step, transform):
    """Writes step ``step`` holding ``transform(state at the newest step)`` with orbax directly
    (bypassing the trainer's checks), as a bug or another tool could."""
    import orbax.checkpoint as ocp

    from archlab.train.checkpoint import _saved_form  # the tree the trainer writes (no ema_params without EMA)
    from archlab.train.compiled_run import Run
    from archlab.train.config import apply_overrides, get_config

    run = Run(apply_overrides(get_config("mlp"), {"train.steps": "4"}))  # the config trained_mlp ran
    checkpointer = Checkpointer(str(workdir / "checkpoints"), keep=10)
    state, data = checkpointer.restore(checkpointer.latest_step(), run.abstract_state)
    state = transform(state).replace(step=np.asarray(step, np.int32))
    checkpointer._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_saved_form(state)),
                                                             data=ocp.args.JsonSave({**data, "position": step})), force=True)
    checkpointer.close()


def test_restore_steps_back_past_a_checkpoint_with_nan_params(tmp_path, trained_mlp):
    workdir = copy_run(trained_mlp, tmp_path)
    _save_raw_step(workdir, 6, lambda s: s.replace(params=jax.tree.map(lambda x: x * np.nan, s.params)))
    messages = []
    assert restore_params(str(workdir), notify=messages.append)[3] == 4
    assert any("step 6" in m and "NaN" in m for m in messages), messages
    assert os.path.isdir(workdir / "checkpoints" / "6")  # a reader renames nothing
    proc = mlp_run(workdir, "--config.train.steps=8")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 4" in proc.stdout
    assert os.path.isdir(workdir / "checkpoints" / "6.unreadable")


# -------------------------------------------------------------------------- 2. corrupted bytes


def test_overwritten_bytes_are_detected_and_the_previous_step_is_used(tmp_path, trained_mlp):
    workdir = copy_run(trained_mlp, tmp_path)
    target = largest_file(workdir / "checkpoints" / "4")
    size = os.path.getsize(target)
    assert size > 16384, target
    with open(target, "r+b") as f:  # 4 KB of garbage mid-file, size unchanged
        f.seek(size // 2)
        f.write(np.random.default_rng(0).bytes(4096))
    assert os.path.getsize(target) == size
    before = tree_state(workdir)

    messages = []
    assert restore_params(str(workdir), notify=messages.append)[3] == 2
    assert any("SHA-256" in m and "step 4" in m for m in messages), messages
    assert tree_state(workdir) == before  # the reader wrote and renamed nothing

    sample_like = run_cli("launch.train", f"--workdir={workdir}", *MLP[:-1], "--config.train.steps=6", "--no_progress")
    assert sample_like.returncode == 0, sample_like.stderr
    assert "resuming from step 2" in sample_like.stdout
    assert "ERROR:absl" not in sample_like.stderr + sample_like.stdout
    assert os.path.isdir(workdir / "checkpoints" / "4.unreadable")
    assert restore_params(str(workdir), notify=quiet)[3] == 6


def test_every_saved_step_is_sealed_with_checksums(trained_mlp):
    for step in (2, 4):
        manifest = json.load(open(trained_mlp / "checkpoints" / str(step) / CHECKSUMS))
        assert manifest["algorithm"] == "sha256"
        names = set(manifest["files"])
        assert any(n.startswith("state/") for n in names) and any(n.startswith("data/") for n in names)


def test_a_damaged_data_position_falls_back_like_a_damaged_array(tmp_path, trained_mlp):
    from archlab.train.checkpoint import write_checksums

    for damage, reseal in (("not json", False), (json.dumps({"position": "four"}), True), (json.dumps({"position": 99}), True)):
        workdir = copy_run(trained_mlp, tmp_path, name=f"run{len(os.listdir(tmp_path))}")
        step_dir = workdir / "checkpoints" / "4"
        data_file = [os.path.join(r, n) for r, _, fs in os.walk(step_dir / "data") for n in fs][0]
        with open(data_file, "w") as f:
            f.write(damage)
        if reseal:  # checksums match: only the position's own check can catch it
            write_checksums(str(step_dir))
        # readers need the params only: a resealed step (valid checksums) with intact arrays serves them
        assert restore_params(str(workdir), notify=quiet)[3] == (4 if reseal else 2)
        proc = mlp_run(workdir, "--config.train.steps=6")
        assert proc.returncode == 0, proc.stderr
        assert "resuming from step 2" in proc.stdout, (damage, proc.stdout)
        assert "ERROR:absl" not in proc.stderr


# ------------------------------------------------------------------------------ 3. workdir lock


def _start_long_run(workdir):
    flags = tiny_cli_flags(train__steps=100000, checkpoint__every=5, train__log_every=5, train__eval_every=100000)
    return subprocess.Popen([sys.executable, "-m", "launch.train", "--model=transformer", f"--workdir={workdir}", *flags, "--no_progress"],
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_second_trainer_is_refused_and_kill_9_leaves_no_stale_lock(tmp_path):
    workdir = tmp_path / "run"
    first = _start_long_run(workdir)
    try:
        assert _wait_for(lambda: os.path.isdir(workdir / "checkpoints" / "5") or first.poll() is not None), "no checkpoint"
        assert first.poll() is None, first.stderr.read()
        metrics_before = read_file(workdir / "metrics.jsonl")
        second = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", *tiny_cli_flags(train__steps=3))
        assert_one_line_error(second, "in use by another trainer", f"pid {first.pid}")
        assert read_file(workdir / "metrics.jsonl")[: len(metrics_before)] == metrics_before
        reader = run_cli("launch.sample", f"--workdir={workdir}", "--length=8")  # readers keep working
        assert reader.returncode == 0, reader.stderr
    finally:
        first.kill()  # SIGKILL: no cleanup code runs
        first.wait()
    third = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}",
                    *tiny_cli_flags(train__steps=12, checkpoint__every=5, train__eval_every=100), "--no_progress")
    assert third.returncode == 0, third.stderr
    assert "resuming from step" in third.stdout


def test_the_lock_is_exclusive_in_process_too(tmp_path):
    from archlab.train.workdir_lock import WorkdirLock, WorkdirLockedError

    with WorkdirLock(str(tmp_path)):
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            WorkdirLock(str(tmp_path)).acquire()
    WorkdirLock(str(tmp_path)).acquire().release()  # released on exit


# -------------------------------------------------------------------- 4. silent start over


def test_history_without_checkpoints_is_not_overwritten(tmp_path, trained_mlp):
    workdir = copy_run(trained_mlp, tmp_path)
    shutil.rmtree(workdir / "checkpoints")
    metrics = read_file(workdir / "metrics.jsonl")
    proc = mlp_run(workdir)
    assert_one_line_error(proc, "metrics.jsonl but no checkpoint", "--restart")
    assert read_file(workdir / "metrics.jsonl") == metrics
    assert not (workdir / "checkpoints").exists() or os.listdir(workdir / "checkpoints") == []

    restarted = mlp_run(workdir, "--restart")
    assert restarted.returncode == 0, restarted.stderr
    kept = [n for n in os.listdir(workdir) if n.startswith("metrics.before-restart-")]
    assert len(kept) == 1 and read_file(workdir / kept[0]) == metrics
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[-1]["step"] == 4


def test_a_run_stopped_before_logging_anything_starts_without_restart(tmp_path, trained_mlp):
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(trained_mlp / "config.json", workdir / "config.json")  # killed while compiling: no metrics, no checkpoint
    proc = mlp_run(workdir)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("flag", ["--workdir=", "--workdir=  "])
def test_an_empty_workdir_is_refused(flag):
    before = os.path.exists(os.path.join(REPO, "runs", "mlp"))
    proc = run_cli("launch.train", "--model=mlp", flag, "--config.train.steps=2")
    assert_one_line_error(proc, "--workdir is empty")
    assert os.path.exists(os.path.join(REPO, "runs", "mlp")) == before
    with pytest.raises(WorkdirError, match="empty"):
        train_and_evaluate(tiny_config("mlp"), "", progress=False, echo=quiet)


# --------------------------------------------------------------------------- memory, signals


def test_a_state_too_large_for_memory_is_refused_before_compiling(tmp_path):
    start = time.time()
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={tmp_path / 'w'}", "--config.model.d_model=32768",
                   "--config.model.mlp_dim=131072", "--config.model.num_heads=8", "--config.model.num_layers=8")
    assert_one_line_error(proc, "needs", "GiB per device")
    assert time.time() - start < 120
    assert not os.path.isdir(tmp_path / "w" / "checkpoints") or os.listdir(tmp_path / "w" / "checkpoints") == []


def test_sigterm_outside_the_loop_ends_the_run_cleanly(tmp_path, monkeypatch, trained_mlp):
    import threading

    from archlab.train.compiled_run import Run

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    original = Run.compile_train_step

    def compile_then_sigterm(self):  # the signal lands while the step is compiling
        compiled = original(self)
        os.kill(os.getpid(), signal.SIGTERM)
        return compiled

    monkeypatch.setattr(Run, "compile_train_step", compile_then_sigterm)
    workdir = copy_run(trained_mlp, tmp_path)
    before = tree_state(workdir / "checkpoints")
    messages = []
    config = tiny_config("mlp", train__steps=8, checkpoint__every=2)
    summary = train_and_evaluate(config, str(workdir), progress=False, echo=messages.append)
    assert summary["interrupted"] and summary["signal"] == "SIGTERM"
    assert any("received SIGTERM before the first step" in m and "latest checkpoint is step 4" in m for m in messages), messages
    assert tree_state(workdir / "checkpoints") == before


def test_sigterm_during_start_up_exits_zero_in_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "launch.train", f"--workdir={tmp_path / 'w'}", *MLP], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # "mlp: N params | data ..." is printed before compiling
    assert "params" in first, first + proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "received SIGTERM" in out and "run the same command to resume" in out


# ------------------------------------------------------------------------------- bad sample.*


@pytest.mark.parametrize("override,fragment", [
    ("sample.length=0", "sample.length"), ("sample.temperature=-1", "sample.temperature"),
    ("sample.top_k=300", "sample.top_k"), ("sample.temperature=nan", "finite"),
])
def test_bad_sample_values_are_refused_before_training(tmp_path, override, fragment):
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={tmp_path / 'w'}", f"--config.{override}")
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "w").exists()


def test_learned_positions_sample_longer_than_max_len_is_refused_before_training(tmp_path):
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={tmp_path / 'w'}", "--config.model.positional=learned",
                   "--config.model.max_len=64", "--config.data.seq_len=64", "--config.sample.length=100")
    assert_one_line_error(proc, "sample.length=100", "model.max_len=64")


def test_an_allocation_failure_at_run_time_is_one_line(tmp_path, monkeypatch, capsys):
    import jax.errors

    from archlab.launch import train as launch_train
    from archlab.train import loop

    def out_of_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68719476736 bytes.")

    monkeypatch.setattr(loop, "train_and_evaluate", out_of_memory)
    with pytest.raises(SystemExit) as exit_info:
        launch_train.main(["--model=mlp", f"--workdir={tmp_path / 'w'}", "--config.parallel.distributed=off"])
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "out of memory" in lines[0] and "68719476736 bytes" in lines[0], lines


def test_a_reader_is_not_thrown_by_the_trainer_deleting_its_oldest_step(tmp_path, trained_mlp, monkeypatch):
    """A live trainer deletes its oldest step (``checkpoint.keep``) while sample/export list or read
    the steps: the reader lists again / takes the next step, and reports no damage."""
    import orbax.checkpoint as ocp

    workdir = copy_run(trained_mlp, tmp_path)
    steps_dir = workdir / "checkpoints"
    real_manager, listings = ocp.CheckpointManager, []

    def manager_racing_a_trainer(directory, *args, **kwargs):
        listings.append(directory)
        if len(listings) == 1:  # what orbax raised in CI: the step vanished between its listing and its stat
            shutil.rmtree(steps_dir / "2")
            raise FileNotFoundError(2, "No such file or directory", str(steps_dir / "2"))
        return real_manager(directory, *args, **kwargs)

    monkeypatch.setattr(ocp, "CheckpointManager", manager_racing_a_trainer)
    notices = []
    assert restore_params(str(workdir), notify=notices.append)[3] == 4
    assert len(listings) == 2 and notices == []

    # The newest step is deleted while it is being read: the reader falls back, without calling it damaged.
    workdir = copy_run(trained_mlp, tmp_path, name="second")
    steps_dir = workdir / "checkpoints"
    real_restore = Checkpointer.restore

    def restore_racing_a_trainer(self, step, abstract_state):
        if step == 4:
            shutil.rmtree(steps_dir / "4")
            raise FileNotFoundError(2, "No such file or directory", str(steps_dir / "4"))
        return real_restore(self, step, abstract_state)

    monkeypatch.setattr(Checkpointer, "restore", restore_racing_a_trainer)
    assert restore_params(str(workdir), notify=notices.append)[3] == 2
    assert notices == [] and sorted(os.listdir(steps_dir)) == ["2"]

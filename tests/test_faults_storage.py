"""Storage faults around a run: a path orbax cannot write, a file-size limit, a full disk, a
read-only or unwritable checkpoints directory, orphaned temporary directories. Each gives one line
and loses nothing already saved."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from archlab.train.workdir import restore_params

from conftest import REPO, assert_one_line_error, cli_env
from faults_common import MLP, copy_run, mlp_run, quiet, trained_mlp, tree_state  # noqa: F401  (trained_mlp: a fixture)


# ------------------------------------------------------------ unsaveable paths and resources


def test_a_non_utf8_workdir_fails_before_training(tmp_path):
    workdir = os.fsencode(str(tmp_path)) + b"/run-\xff"
    proc = subprocess.run([sys.executable, "-m", "launch.train", b"--workdir=" + workdir, *MLP], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "UTF-8")
    assert not os.path.exists(os.path.join(workdir, b"metrics.jsonl"))


def test_a_finished_run_run_again_adds_no_duplicate_eval_row(tmp_path, trained_mlp):
    workdir = copy_run(trained_mlp, tmp_path)
    proc = mlp_run(workdir)
    assert proc.returncode == 0, proc.stderr
    rows = [(r["step"], r["split"]) for r in map(json.loads, open(workdir / "metrics.jsonl"))]
    assert len(rows) == len(set(rows)), rows
    assert (4, "eval") in rows


def test_file_size_limit_gives_one_line_and_keeps_earlier_checkpoints(tmp_path, trained_mlp):
    workdir = copy_run(trained_mlp, tmp_path)
    before = {step: tree_state(workdir / "checkpoints" / step) for step in ("2", "4")}
    # RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail with EFBIG. Half the raw bytes of the largest parameter:
    # orbax/ocdbt writes an array's chunk into one data file, and trained float32 weights barely compress, so step 6
    # cannot fit however its data files are split (which varies run to run), while the logs still can.
    metadata = json.loads((workdir / "checkpoints" / "4" / "state" / "_METADATA").read_text())["tree_metadata"]
    largest_param = max(math.prod(leaf["value_metadata"]["write_shape"]) * 4
                        for key, leaf in metadata.items() if key.startswith("('params'"))
    limit = f"--fsize={largest_param // 2}"
    proc = subprocess.run(["prlimit", limit, sys.executable, "-m", "launch.train", f"--workdir={workdir}", *MLP, "--config.train.steps=8"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "could not write checkpoint step 6", "File too large", "earlier checkpoints are intact")
    for step, state in before.items():
        assert tree_state(workdir / "checkpoints" / step) == state
    assert restore_params(str(workdir), notify=quiet)[3] == 4


@pytest.fixture
def small_filesystem(tmp_path):
    """A 3 MB tmpfs (root only); skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and permission to mount a tmpfs to simulate a full disk")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_gives_one_line_and_keeps_earlier_checkpoints(small_filesystem, trained_mlp):
    workdir = small_filesystem / "run"
    shutil.copytree(trained_mlp, workdir)
    before = {step: tree_state(workdir / "checkpoints" / step) for step in ("2", "4")}
    with open(small_filesystem / "filler", "wb") as f:  # leave room for logs but not for another step
        free = shutil.disk_usage(small_filesystem).free
        f.write(b"\0" * max(free - 200_000, 0))
    proc = mlp_run(workdir, "--config.train.steps=8", "--config.checkpoint.keep=5")
    assert_one_line_error(proc, "No space left on device", "earlier checkpoints are intact")
    for step, state in before.items():
        assert tree_state(workdir / "checkpoints" / step) == state


LATE_CALLBACK = """
import asyncio, sys, time
import tensorstore as ts
from archlab.train.checkpoint import Checkpointer
Checkpointer(sys.argv[1], keep=1).close()  # installs the hook
promise, future = ts.Promise.new()  # a write still in flight when orbax's event loop is closed
loop = asyncio.new_event_loop()
async def wait_for_write():
    return await future
loop.create_task(wait_for_write())
loop.run_until_complete(asyncio.sleep(0.01))
loop.close()
promise.set_result(1)  # its callback now finds the loop closed
time.sleep(0.2)
class Finalizer:
    def __del__(self):
        raise ValueError("kept")
Finalizer()  # an unrelated unraisable exception, still reported
"""


def test_a_write_finishing_after_a_failed_save_prints_nothing(tmp_path):
    """A failed save's late tensorstore callbacks (seen once in CI under a full disk) add no traceback to
    the one error line; other unraisable exceptions are still reported."""
    proc = subprocess.run([sys.executable, "-c", LATE_CALLBACK, str(tmp_path / "checkpoints")], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Event loop is closed" not in proc.stderr
    assert "ValueError: kept" in proc.stderr


def test_an_unwritable_checkpoints_dir_fails_before_training(tmp_path, trained_mlp):
    workdir = copy_run(trained_mlp, tmp_path)
    shutil.rmtree(workdir / "checkpoints")
    (workdir / "checkpoints").write_text("a file where the checkpoints directory should be")
    proc = mlp_run(workdir, "--restart")
    assert_one_line_error(proc, "checkpoints")
    assert "step" not in proc.stdout.split("params |")[-1]  # no training output
    assert not any(n.startswith("metrics.before-restart") for n in os.listdir(workdir))


def test_orphaned_orbax_temp_dirs_are_removed_at_start(tmp_path, trained_mlp):
    workdir = copy_run(trained_mlp, tmp_path)
    orphan = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1733300000000000"
    (orphan / "state").mkdir(parents=True)
    (orphan / "state" / "junk").write_bytes(b"half a save")
    proc = mlp_run(workdir)
    assert proc.returncode == 0, proc.stderr
    assert not orphan.exists()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


_READ_ONLY_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def test_a_read_only_checkpoints_dir_fails_before_training_and_keeps_its_steps(tmp_path, trained_mlp):
    # Root ignores permission bits, not a read-only mount: checkpoints/ is bind-mounted read-only
    # in a private mount namespace that ends with the process.
    workdir = copy_run(trained_mlp, tmp_path)
    checkpoints = str(workdir / "checkpoints")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _READ_ONLY_MOUNT, "sh", checkpoints,
                            "sh", "-c", f"touch {checkpoints}/x"], capture_output=True, text=True)
    if "Read-only" not in probe.stderr:
        pytest.skip(f"cannot bind-mount a directory read-only here (unshare --mount: {probe.stderr.strip()[:120]})")
    before = tree_state(workdir / "checkpoints")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _READ_ONLY_MOUNT, "sh", checkpoints,
                           sys.executable, "-m", "launch.train", f"--workdir={workdir}", *MLP, "--config.train.steps=8"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "cannot write checkpoints", "Read-only file system")
    assert tree_state(workdir / "checkpoints") == before
    assert not any(r["step"] > 4 for r in map(json.loads, open(workdir / "metrics.jsonl")))

"""What the fault tests share: a finished 4-step mlp run to copy and damage, and how to compare trees."""

import os
import shutil

import pytest

from archlab.train.checkpoint import CHECKSUMS

from conftest import run_cli

MLP = ["--model=mlp", "--config.train.steps=4", "--config.checkpoint.every=2", "--config.train.log_every=2",
       "--config.train.eval_every=100", "--no_progress"]


def quiet(*_):
    pass


def mlp_run(workdir, *extra, **kw):
    return run_cli("launch.train", f"--workdir={workdir}", *MLP, *extra, **kw)


def tree_state(path):
    """(relative path, size, mtime_ns) of every file and directory under ``path``."""
    entries = []
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            st = os.lstat(full)
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return sorted(entries)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def largest_file(directory):
    files = [os.path.join(r, n) for r, _, fs in os.walk(directory) for n in fs if n != CHECKSUMS]
    return max(files, key=os.path.getsize)


@pytest.fixture(scope="module")
def trained_mlp(tmp_path_factory):
    """A finished 4-step mlp run with checkpoints at steps 2 and 4 (copied by tests that damage it)."""
    workdir = tmp_path_factory.mktemp("faults") / "mlp"
    proc = mlp_run(workdir)
    assert proc.returncode == 0, proc.stderr
    return workdir


def copy_run(source, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target

"""Faults around the readers of a run (issue 21): export must never certify a model whose outputs
are NaN/inf, and launch.sample / launch.export must write nothing into the workdir they read.

Read-only is tested for real: the CLI runs with the workdir bind-mounted read-only in a private
mount namespace (``unshare --mount``; root ignores permission bits but not a read-only mount), or,
where that is not allowed, as user ``nobody`` (when root) or with the write bits removed (when not
root). Each test's workdir also holds a damaged newest step, which a writer would rename aside.
"""

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error, cli_env, run_cli, tiny_cli_flags

EXPORT_PACKAGES = ("jax2onnx", "onnx", "onnxruntime")


def _missing_export_packages():
    import importlib.util

    return [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]


needs_onnx = pytest.mark.skipif(bool(_missing_export_packages()),
                                reason=f"ONNX export packages not installed ({', '.join(_missing_export_packages())}): "
                                       "pip install -e '.[export]'")

MLP = ["--model=mlp", "--config.train.steps=4", "--config.checkpoint.every=4", "--config.train.log_every=2",
       "--config.train.eval_every=100", "--config.model.hidden=16", "--no_progress"]


def tree_state(path):
    """(relative path, kind, size, mtime_ns) of ``path`` and everything under it."""
    def entry(full):
        st = os.lstat(full)
        return os.path.relpath(full, path), stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns

    entries = [entry(path)]
    for root, dirs, files in os.walk(path):
        entries += [entry(os.path.join(root, name)) for name in dirs + files]
    return sorted(entries)


def add_damaged_step(workdir, good=4, bad=6):
    """A newest step ``bad`` that restore rejects (its state says step ``good``); a writer renames it aside."""
    checkpoints = os.path.join(workdir, "checkpoints")
    shutil.copytree(os.path.join(checkpoints, str(good)), os.path.join(checkpoints, str(bad)))


@pytest.fixture(scope="module")
def scratch():
    """A directory every user can traverse (pytest's own tmp dirs are 0700 when root), removed after."""
    path = tempfile.mkdtemp(prefix="archlab-readers-")
    os.chmod(path, 0o755)
    outs = os.path.join(path, "outs")
    os.mkdir(outs)
    os.chmod(outs, 0o777)  # where a reader running as another user writes its --out
    yield path
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def mlp_run(scratch):
    """A finished 4-step mlp run (checkpoint at step 4) plus a damaged step 6."""
    workdir = os.path.join(scratch, "mlp")
    proc = run_cli("launch.train", f"--workdir={workdir}", *MLP)
    assert proc.returncode == 0, proc.stderr
    add_damaged_step(workdir)
    return workdir


@pytest.fixture(scope="module")
def lm_run(scratch):
    """A finished 4-step tiny transformer run (checkpoint at step 4) plus a damaged step 6."""
    workdir = os.path.join(scratch, "lm")
    flags = tiny_cli_flags(train__steps=4, checkpoint__every=4, train__eval_every=100, train__log_every=2)
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", *flags, "--no_progress")
    assert proc.returncode == 0, proc.stderr
    add_damaged_step(workdir)
    return workdir


def out_dir(scratch, name):
    return os.path.join(scratch, "outs", name)


# ------------------------------------------------------------------ running a CLI on a read-only dir

_RO_MOUNT = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _as_nobody():
    user = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def _make_writable(path):
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            full = os.path.join(root, name)
            os.chmod(full, os.stat(full).st_mode | stat.S_IWUSR)
    if os.path.isdir(path):
        os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)


@contextlib.contextmanager
def _write_bits_removed(path):
    for root, dirs, _ in os.walk(path):
        for name in [*dirs, "."]:
            full = os.path.join(root, name)
            os.chmod(full, os.stat(full).st_mode & ~0o222)
    try:
        yield
    finally:
        _make_writable(path)


def _probe(method, scratch):
    """Whether ``method`` really makes a directory unwritable to the process it runs (a write in it fails)."""
    probe = tempfile.mkdtemp(dir=scratch)
    os.chmod(probe, 0o755)
    write = [sys.executable, "-c", f"open({os.path.join(probe, 'x')!r}, 'w')"]
    try:
        if method == "mount":
            works = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _RO_MOUNT, "sh", probe,
                                    sys.executable, "-c", "pass"], capture_output=True, timeout=60).returncode == 0
            blocked = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _RO_MOUNT, "sh", probe,
                                      *write], capture_output=True, timeout=60).returncode != 0
            return works and blocked
        if method == "nobody":  # the interpreter, venv and repo must be readable by nobody
            runs = subprocess.run([sys.executable, "-c", "import jax, deploy, train"], cwd=REPO, env=cli_env(),
                                  preexec_fn=_as_nobody, capture_output=True, timeout=120).returncode == 0
            blocked = subprocess.run(write, preexec_fn=_as_nobody, capture_output=True, timeout=60).returncode != 0
            return runs and blocked
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return False


@pytest.fixture(scope="module")
def read_only(scratch):
    """``run(directory, *cli_args)``: ``python -m cli_args`` with ``directory`` read-only to it."""
    if os.geteuid() != 0:
        method = "chmod"
    elif shutil.which("unshare") and _probe("mount", scratch):
        method = "mount"
    elif _probe("nobody", scratch):
        method = "nobody"
    else:
        pytest.skip("cannot make a directory read-only to a root process here: a read-only bind mount in a private "
                    "namespace (unshare --mount) is not permitted, and user nobody cannot run this interpreter/repo")

    def run(directory, *args, timeout=300):
        env = cli_env()
        command = [sys.executable, "-m", *args]
        if method == "mount":
            return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _RO_MOUNT, "sh",
                                   directory, *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if method == "nobody":
            env["HOME"] = os.path.join(scratch, "outs")
            return subprocess.run(command, cwd=REPO, env=env, preexec_fn=_as_nobody, capture_output=True, text=True,
                                  timeout=timeout)
        with _write_bits_removed(directory):
            return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    run.method = method
    return run


# ------------------------------------------------------------------------------- 1. non-finite parity


def test_parity_fails_on_nan_or_inf_on_either_side():
    from archlab.deploy import ParityError
    from archlab.deploy.parity import check_parity, parity_table, raise_on_failure

    x = {2: np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)}
    finite = lambda x: [x * 3.0]  # noqa: E731
    all_nan = lambda x: [np.full_like(x, np.nan)]  # noqa: E731
    one_inf = lambda x: [np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x * 3.0)]  # noqa: E731

    both_nan = check_parity("onnx", all_nan, all_nan, x)  # max(0, nan) reads as 0: this used to pass
    assert not both_nan["passed"] and both_nan["nonfinite_jax"] == 12 and both_nan["nonfinite_outputs"] == 12
    with pytest.raises(ParityError, match=r"^onnx not certified: the model's own JAX outputs are non-finite \(12 of 12 values"):
        raise_on_failure([both_nan])

    backend_nan = check_parity("saved_model", all_nan, finite, x)
    backend_inf = check_parity("tensorrt_fp16", one_inf, finite, x, precision="float16")
    for record, count in ((backend_nan, 12), (backend_inf, 1)):
        assert not record["passed"] and record["nonfinite_jax"] == 0 and record["nonfinite_outputs"] == count, record
        assert np.isfinite(record["max_abs"]) and json.loads(json.dumps(record)) == record  # the report stays plain JSON
    with pytest.raises(ParityError, match=r"^saved_model outputs are non-finite \(12 of 12 values NaN/inf\) where JAX's are finite"):
        raise_on_failure([check_parity("onnx", finite, finite, x), backend_nan])
    with pytest.raises(ParityError, match=r"^tensorrt_fp16 outputs are non-finite \(1 of 12"):
        raise_on_failure([backend_inf])
    assert check_parity("onnx", one_inf, one_inf, x)["passed"] is False  # the same inf in both is no pass either
    assert all(row.endswith("| FAIL (non-finite) |") for row in parity_table([both_nan, backend_nan])[2:])
    assert check_parity("onnx", finite, finite, x)["passed"]


def _save_overflowing_step(workdir, step=6, scale=1e30):
    """A finite newest step whose params are the trained ones times ``scale``: restore accepts it,
    and the mlp's logits overflow float32 to inf/NaN."""
    from archlab.train.checkpoint import Checkpointer
    from archlab.train.compiled_run import Run
    from archlab.train.workdir import load_run_info

    run = Run(load_run_info(workdir)["config"])
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=10)
    try:
        state, data = checkpointer.restore(checkpointer.latest_step(), run.abstract_state)
        params = {k: {n: np.asarray(v) * np.float32(scale) for n, v in layer.items()} for k, layer in state.params.items()}
        checkpointer.save(step, state.replace(params=params, step=np.asarray(step, np.int32)), data)
        checkpointer.wait()
    finally:
        checkpointer.close()


@needs_onnx
def test_export_of_a_model_whose_own_outputs_are_nonfinite_exits_1(mlp_run, scratch):
    workdir = os.path.join(scratch, "overflow")
    shutil.copytree(mlp_run, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
    _save_overflowing_step(workdir)

    proc = run_cli("launch.export", f"--workdir={workdir}", "--formats=onnx")  # default --out: WORKDIR/export
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "onnx not exported: the model's own JAX outputs are non-finite" in errors[0], errors[0]
    assert "at step 6" in errors[0]
    report = json.loads(open(os.path.join(workdir, "export", "export_report.json")).read())
    assert report["step"] == 6 and report["jax"]["nonfinite"] > 0
    assert report["formats"]["onnx"]["status"] == "not exported"
    assert not os.path.exists(os.path.join(workdir, "export", "model.onnx"))


@needs_onnx
def test_export_whose_backend_outputs_nan_exits_1_naming_it(mlp_run, scratch, monkeypatch, capsys):
    from archlab.deploy import pipeline
    from archlab.launch import export

    real = pipeline.onnxruntime_runner

    def nan_runner(model, path):
        run = real(model, path)
        return lambda x: [np.full_like(y, np.nan) for y in run(x)]

    monkeypatch.setattr(pipeline, "onnxruntime_runner", nan_runner)  # the name deploy/pipeline.py calls
    out = out_dir(scratch, "backend_nan")
    with pytest.raises(SystemExit) as exit_:
        export.main([f"--workdir={mlp_run}", "--formats=onnx", f"--out={out}"])
    assert exit_.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: onnx outputs are non-finite (") and "NaN/inf) where JAX's are finite" in last, last
    record = json.loads(open(os.path.join(out, "export_report.json")).read())["formats"]["onnx"]
    assert record["passed"] is False and record["nonfinite_outputs"] == record["values"] > 0 and record["nonfinite_jax"] == 0


# ----------------------------------------------------------------------- 2. readers write nothing


def test_export_refuses_a_read_only_workdir_without_out_before_any_work(mlp_run, read_only):
    before = tree_state(mlp_run)
    proc = read_only(mlp_run, "launch.export", f"--workdir={mlp_run}", "--formats=onnx")
    assert_one_line_error(proc, "--out", "not writable", mlp_run)  # one line: no restore or export message first
    into = read_only(mlp_run, "launch.export", f"--workdir={mlp_run}", "--formats=onnx", f"--out={os.path.join(mlp_run, 'x')}")
    assert_one_line_error(into, "--out", "not writable")
    assert tree_state(mlp_run) == before


@needs_onnx
def test_export_from_a_read_only_workdir_writes_only_to_out(mlp_run, scratch, read_only):
    before = tree_state(mlp_run)
    out = out_dir(scratch, "read_only_export")
    proc = read_only(mlp_run, "launch.export", f"--workdir={mlp_run}", "--formats=onnx", f"--out={out}")
    assert proc.returncode == 0, f"[{read_only.method}] {proc.stderr}"
    report = json.loads(open(os.path.join(out, "export_report.json")).read())
    assert report["step"] == 4 and report["formats"]["onnx"]["passed"]  # step 6 is damaged: skipped, not renamed
    assert "step 6" in proc.stderr  # noticed, and left as it is
    assert tree_state(mlp_run) == before


def test_sample_from_a_read_only_workdir(lm_run, read_only):
    before = tree_state(lm_run)
    proc = read_only(lm_run, "launch.sample", f"--workdir={lm_run}", "--prompt=The ", "--length=8", "--temperature=0")
    assert proc.returncode == 0, f"[{read_only.method}] {proc.stderr}"
    assert proc.stdout.startswith("The ") and "at step 4" in proc.stderr
    assert tree_state(lm_run) == before


@needs_onnx
def test_readers_on_a_writable_workdir_leave_its_tree_unchanged(mlp_run, lm_run, scratch):
    """Behavioural, so it holds as root too: names, sizes and mtimes of every entry are unchanged
    (the damaged step 6 is not renamed to 6.unreadable, no export/ appears)."""
    before_mlp, before_lm = tree_state(mlp_run), tree_state(lm_run)
    sample = run_cli("launch.sample", f"--workdir={lm_run}", "--length=4")
    assert sample.returncode == 0, sample.stderr
    export = run_cli("launch.export", f"--workdir={mlp_run}", "--formats=onnx", f"--out={out_dir(scratch, 'writable')}")
    assert export.returncode == 0, export.stderr
    assert tree_state(lm_run) == before_lm
    assert tree_state(mlp_run) == before_mlp

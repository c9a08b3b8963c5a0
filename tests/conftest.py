"""Test setup: 8 fake CPU devices (set before jax is imported) and tiny configs."""

import hashlib
import importlib.util
import math
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from archlab.train.xla_flags import relax_fake_device_collectives  # noqa: E402  (imports no jax)

relax_fake_device_collectives()  # 8 fake devices on 2 loaded cores: no rendezvous abort after 40 s (JAX issue 31818)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "model.num_layers": "2",
    "model.d_model": "32",
    "model.num_heads": "2",
    "model.mlp_dim": "64",
    "model.max_len": "32",
    "data.seq_len": "32",
    "train.batch_size": "8",
    "train.steps": "20",
    "train.warmup_steps": "2",
    "train.log_every": "5",
    "train.eval_every": "10",
    "train.eval_batches": "2",
    "checkpoint.every": "10",
    "sample.length": "16",
}


def tiny_config(model: str = "transformer", **overrides):
    """A seconds-sized config; keyword overrides use '__' for '.', e.g. train__steps=6."""
    from archlab.train.config import apply_overrides, get_config

    base = get_config(model)
    values = {k: v for k, v in TINY.items() if k.split(".")[1] in base[k.split(".")[0]]}  # keys this family has
    values.update({k.replace("__", "."): str(v) for k, v in overrides.items()})
    mesh = values.get("parallel.mesh", "")
    if mesh and "-1" not in mesh and "parallel.num_devices" not in values:  # a mesh smaller than the 8 fake devices
        values["parallel.num_devices"] = str(math.prod(int(part.split(":")[1]) for part in mesh.split(",")))
    return apply_overrides(base, values)


def tiny_cli_flags(**overrides) -> list[str]:
    values = dict(TINY)
    values.update({k.replace("__", "."): str(v) for k, v in overrides.items()})
    return [f"--config.{k}={v}" for k, v in values.items()]


def tree_digest(path) -> str:
    """SHA-256 over every file's path and bytes under ``path``: equal digests, identical trees."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(full.encode())
            digest.update(open(full, "rb").read())
    return digest.hexdigest()


def cli_env() -> dict:
    """Environment for CLI subprocesses: one CPU device, as a user's laptop has."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args, timeout=300, env=None):
    """``python -m ARGS`` in a fresh process, as a user runs it (see :func:`cli_env`); ``env``
    adds or overrides environment variables."""
    import subprocess

    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env={**cli_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments, code=2):
    """Bad input: exit ``code``, exactly one non-empty stderr line, no traceback, naming each fragment."""
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def python():
    return sys.executable


EXPORT_PACKAGES = ("tensorflow", "jax2onnx", "onnx", "onnxruntime")
MISSING_EXPORT_PACKAGES = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
needs_export = pytest.mark.skipif(bool(MISSING_EXPORT_PACKAGES),
                                  reason=f"export packages not installed ({', '.join(MISSING_EXPORT_PACKAGES)}): pip install -e '.[export]'")

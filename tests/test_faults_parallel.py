"""Multi-process and fake-device faults: a missing jax.distributed peer ends in one line within
parallel.initialization_timeout_s (jaxlib used to abort from C++ with a stack trace), and fake-device
runs get collective timeouts a loaded 2-core machine cannot hit (XLA:CPU aborted an all-reduce
whose threads arrived over 40 s apart, JAX issue 31818)."""

import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, assert_one_line_error, cli_env

from archlab.train.xla_flags import COLLECTIVE_TIMEOUTS, relax_fake_device_collectives, with_collective_timeouts

TIMEOUT = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(module, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env={**cli_env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, started):
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), time.monotonic() - started


def test_a_missing_peer_or_coordinator_fails_in_one_line_within_the_timeout(tmp_path):
    # Process 0 of 2 with no process 1, and (on another port) process 1 of 2 with no coordinator: both at once.
    started = time.monotonic()
    procs = [_start("launch.train", "--model=mlp", f"--workdir={tmp_path / f'run{pid}'}", "--no_progress",
                    "--config.parallel.distributed=explicit", f"--coordinator=127.0.0.1:{_free_port()}", "--num_processes=2",
                    f"--process_id={pid}", f"--config.parallel.initialization_timeout_s={TIMEOUT}") for pid in (0, 1)]
    for pid, proc in enumerate(procs):
        result, wall = _finish(proc, started)
        assert_one_line_error(result, f"parallel.initialization_timeout_s={TIMEOUT}", f"process {pid} of 2", "127.0.0.1:")
        assert wall < 60, wall
        assert not (tmp_path / f"run{pid}" / "metrics.jsonl").exists()


def test_nas_has_the_initialization_timeout_too(tmp_path):
    from archlab.train.errors import SearchError
    from archlab.train.nas.config import apply_nas_overrides, nas_config

    assert nas_config().parallel.initialization_timeout_s == 120
    with pytest.raises(SearchError, match="parallel.initialization_timeout_s must be >= 1"):
        apply_nas_overrides(nas_config(), {"parallel.initialization_timeout_s": "0"})
    started = time.monotonic()
    proc = _start("launch.nas", "--strategy=random", f"--workdir={tmp_path / 'nas'}", "--config.parallel.distributed=explicit",
                  f"--coordinator=127.0.0.1:{_free_port()}", "--num_processes=2", "--process_id=1",
                  f"--config.parallel.initialization_timeout_s={TIMEOUT}")
    result, wall = _finish(proc, started)
    assert_one_line_error(result, f"parallel.initialization_timeout_s={TIMEOUT}", "process 1 of 2")
    assert wall < 60, wall


def test_a_coordinator_port_in_use_is_one_line(tmp_path):
    # jaxlib 0.10 logs "Failed to add port to server" and then mostly segfaults: the port is tried first.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = _start("launch.train", "--model=mlp", f"--workdir={tmp_path / 'run'}", "--no_progress",
                      "--config.parallel.distributed=explicit", f"--coordinator=127.0.0.1:{busy.getsockname()[1]}",
                      "--num_processes=2", "--process_id=0")
        result, _ = _finish(proc, time.monotonic())
    assert_one_line_error(result, "jax.distributed could not start", "process 0 of 2", "already in use")


# ------------------------------------------------------------------------------ fake devices


def test_the_test_process_runs_its_fake_devices_with_the_collective_timeouts():
    import jax

    flags = os.environ["XLA_FLAGS"]
    assert "--xla_force_host_platform_device_count=8" in flags
    for name, seconds in COLLECTIVE_TIMEOUTS.items():
        assert f"--{name}={seconds}" in flags, flags
    assert jax.device_count() == 8  # XLA accepted them: it aborts at start on a flag it does not know


def test_flag_helpers_keep_what_the_user_set():
    mine = "--xla_force_host_platform_device_count=4 --xla_cpu_collective_call_terminate_timeout_seconds=7"
    assert with_collective_timeouts(mine) == mine + " --xla_cpu_collective_call_warn_stuck_timeout_seconds=60"
    assert with_collective_timeouts(with_collective_timeouts("")) == with_collective_timeouts("")
    for untouched in ({}, {"XLA_FLAGS": "--xla_cpu_foo=1"}, {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}):
        env = dict(untouched)
        relax_fake_device_collectives(env)
        assert env == untouched


@pytest.mark.parametrize("flags, expect", [
    ("--xla_force_host_platform_device_count=8", with_collective_timeouts("--xla_force_host_platform_device_count=8")),
    ("--xla_force_host_platform_device_count=2 --xla_cpu_collective_call_warn_stuck_timeout_seconds=5",
     "--xla_force_host_platform_device_count=2 --xla_cpu_collective_call_warn_stuck_timeout_seconds=5 "
     "--xla_cpu_collective_call_terminate_timeout_seconds=300"),
    ("", ""),
])
def test_launch_adds_the_timeouts_before_jax_starts(flags, expect):
    code = "import os, sys, launch; assert 'jax' not in sys.modules; import jax; print(jax.device_count()); print(os.environ.get('XLA_FLAGS', ''))"
    env = {**cli_env(), "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, seen = result.stdout.splitlines()
    assert seen == expect
    assert int(count) == (int(flags.split("count=")[1].split()[0]) if flags else 1)  # XLA took the flags


SLOW_DEVICE = """
import time, jax, numpy as np
from functools import partial
from jax.sharding import Mesh, PartitionSpec as P

def late(x):  # device 0 reaches the all-reduce 3 s after the others
    if int(x[0]) == 0:
        time.sleep(3)
    return x

@jax.jit
@partial(jax.shard_map, mesh=Mesh(np.array(jax.devices()), ("d",)), in_specs=P("d"), out_specs=P())
def total(x):
    return jax.lax.psum(jax.pure_callback(late, jax.ShapeDtypeStruct(x.shape, x.dtype), x), "d")

print(float(total(np.arange(8.0))[0]))
"""


def test_the_terminate_flag_is_the_one_that_ends_a_late_all_reduce():
    """What the flags do, in jaxlib 0.10: the wait ends after warn_stuck + terminate seconds. So a
    device 3 s late aborts the process under 1 + 1 s and survives 3 + 2 s (a terminate of 2 alone
    would not); xla_cpu_collective_timeout_seconds does not rescue it."""
    def run(warn, terminate, extra=""):
        flags = (f"--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_warn_stuck_timeout_seconds={warn} "
                 f"--xla_cpu_collective_call_terminate_timeout_seconds={terminate} {extra}")
        return subprocess.run([sys.executable, "-c", SLOW_DEVICE], cwd=REPO, env={**cli_env(), "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                              capture_output=True, text=True, timeout=120)

    aborted = run(1, 1, "--xla_cpu_collective_timeout_seconds=600")
    assert aborted.returncode != 0 and "Termination timeout" in aborted.stderr, aborted.stderr[-2000:]
    survived = run(3, 2)
    assert survived.returncode == 0 and survived.stdout.strip() == "28.0", survived.stderr[-2000:]

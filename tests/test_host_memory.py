"""The host memory policy (train/host_memory.py): freed XLA buffers stay mapped and are reused."""

import subprocess
import sys

import pytest
from conftest import REPO, assert_one_line_error, cli_env, run_cli

from archlab.train import host_memory

glibc = pytest.mark.skipif(host_memory._glibc() is None, reason="the policy's mallopt knobs exist only in glibc (Linux)")

# A jitted step with a 32 MB XLA temp buffer, run 12 times after 2 warm-ups: prints the policy
# and the fewest minor page faults of a call. Released, every call maps its buffer afresh; kept,
# the heap still grows now and then while it comes to hold the few temp buffers that overlap in
# time (more often when other processes load the machine), but calls that reuse it fault nothing.
FAULTS_PER_CALL = """
import resource, train, jax, jax.numpy as jnp
from archlab.train import host_memory
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x) + jnp.exp(x)).sum())
x = jnp.ones((2048, 2048))
for _ in range(2):
    f(x).block_until_ready()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(host_memory.policy(), min(faults))
"""


def faults_per_call(policy):
    env = dict(cli_env(), ARCHLAB_HOST_MEMORY=policy)
    proc = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    name, faults = proc.stdout.split()
    return name, float(faults)


def test_requested_policy_reads_the_environment():
    assert host_memory.requested_policy({}) == "keep"
    assert host_memory.requested_policy({"ARCHLAB_HOST_MEMORY": " Release "}) == "release"
    with pytest.raises(ValueError, match="valid: keep, release"):
        host_memory.requested_policy({"ARCHLAB_HOST_MEMORY": "sometimes"})


@glibc
def test_kept_memory_is_reused_instead_of_faulted_in_every_call():
    kept_name, kept = faults_per_call("keep")
    released_name, released = faults_per_call("release")
    assert (kept_name, released_name) == ("keep", "release")
    # Released: even the best call maps its temp buffer afresh (8,192 4 KiB pages for 32 MB);
    # kept: the pages of an earlier call are reused.
    assert released > 4_000, released
    assert kept < released / 20, (kept, released)


@glibc
def test_importing_train_applies_the_requested_policy():
    assert host_memory.policy() == host_memory.requested_policy()  # keep, unless the environment opts out


def test_an_invalid_policy_is_one_line_naming_the_valid_ones():
    proc = run_cli("launch.train", "--model=mlp", env={"ARCHLAB_HOST_MEMORY": "sometimes"}, timeout=120)
    assert_one_line_error(proc, "ARCHLAB_HOST_MEMORY", "keep, release")

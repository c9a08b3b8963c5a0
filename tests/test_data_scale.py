"""Memory does not grow with the dataset: a 2 GB token file trains within a fixed bound of a tiny one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO, cli_env

GIB = 2**30
BOUND_MB = 300  # the bound: peak resident memory at most this much above the tiny file's run

_MEASURE = """
import json, resource, sys
from archlab.launch.train import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _token_file(path, num_tokens: int) -> None:
    """``num_tokens`` uint16 byte-valued tokens written in 64 MB chunks (never whole in memory)."""
    chunk = (np.arange(32 * 2**20) * 7 % 251 + 1).astype("<u2")
    with open(path, "wb") as f:
        left = num_tokens
        while left:
            part = chunk[: min(left, len(chunk))]
            part.tofile(f)
            left -= len(part)


def _peak_mb(path, workdir) -> float:
    flags = ["--model=transformer", f"--workdir={workdir}", "--no_progress", f"--config.data.path={path}",
             "--config.data.format=tokens", "--config.train.steps=20", "--config.train.eval_batches=2",
             "--config.train.log_every=10", "--config.train.eval_every=20", "--config.checkpoint.every=20",
             "--config.model.num_layers=1", "--config.model.d_model=32", "--config.model.num_heads=2",
             "--config.model.mlp_dim=64", "--config.sample.length=8"]
    out = subprocess.run([sys.executable, "-c", _MEASURE, *flags], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None)
    return result["peak_mb"]


def test_resident_memory_of_a_2gb_token_file_stays_within_a_fixed_bound(tmp_path):
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    _token_file(big, GIB)  # 2 GiB of uint16 tokens
    _token_file(small, 200_000)
    assert os.path.getsize(big) == 2 * GIB
    small_mb = _peak_mb(small, tmp_path / "small_run")
    big_mb = _peak_mb(big, tmp_path / "big_run")
    assert big_mb - small_mb < BOUND_MB, f"peak RSS {big_mb:.0f} MB for 2 GiB vs {small_mb:.0f} MB for 400 KB"
    metrics = [json.loads(line) for line in open(tmp_path / "big_run" / "metrics.jsonl")]
    assert any(m["split"] == "eval" for m in metrics)

"""launch.nas: resumable searches in a workdir, outputs, and one-line errors for bad input."""

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import REPO, cli_env

from archlab.train.nas.benchmark_table import generate_table
from archlab.train.nas.config import apply_nas_overrides, nas_config
from archlab.train.nas.runner import run_strategies

QUIET = dict(echo=lambda *a, **k: None)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("table") / "nb201.csv")
    generate_table(path, 0)
    return path


def _config(table, **overrides):
    values = {"scorer.kind": "table", "scorer.table": table, "search.budget": "40", "search.seeds": "1", **overrides}
    return apply_nas_overrides(nas_config(), values)


def _rows(path):
    return [(r["genotype"], r["score"]) for r in map(json.loads, open(path))]


@pytest.mark.parametrize("strategy", ["evolution", "reinforce"])
def test_killed_search_resumes_to_the_same_history(tmp_path, table, strategy):
    config = _config(table, **{"search.children_per_cycle": "4", "search.controller_batch": "5"})
    straight = run_strategies(config, [strategy], str(tmp_path / "straight"), **QUIET)
    stopped = run_strategies(config, [strategy], str(tmp_path / "resumed"), max_cycles=3, **QUIET)
    assert stopped == {"complete": False}
    partial = _rows(tmp_path / "resumed" / strategy / "seed_0" / "history.jsonl")
    assert 0 < len(partial) < 40
    resumed = run_strategies(config, [strategy], str(tmp_path / "resumed"), **QUIET)
    a = _rows(tmp_path / "straight" / strategy / "seed_0" / "history.jsonl")
    b = _rows(tmp_path / "resumed" / strategy / "seed_0" / "history.jsonl")
    assert len(a) == 40 and a == b and b[: len(partial)] == partial
    assert straight["best"] == resumed["best"]


def test_all_strategies_write_comparison_best_and_plots(tmp_path, table):
    config = _config(table, **{"search.budget": "60", "search.seeds": "2"})
    summary = run_strategies(config, ["evolution", "reinforce", "random"], str(tmp_path), **QUIET)
    comparison = json.load(open(tmp_path / "comparison.json"))
    assert set(comparison["strategies"]) == {"evolution", "reinforce", "random"} and comparison["optimum"] > 0
    assert all(row["runs"] == 2 and row["regret_mean"] >= 0 for row in comparison["strategies"].values())
    best = json.load(open(tmp_path / "best.json"))
    assert all(best["score"] >= row["best_mean"] for row in comparison["strategies"].values())
    assert sorted(os.listdir(tmp_path / "plots")) == ["best_so_far.png"] + [f"op_frequencies_{s}.png" for s in ("evolution", "random", "reinforce")]
    assert summary["complete"]


def _nas(*args, cwd=REPO):
    return subprocess.run(["python", "-m", "launch.nas", *args], capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=600)


def test_training_scorer_end_to_end_through_the_cli(tmp_path):
    proc = _nas("--strategy=random", f"--workdir={tmp_path}", "--config.search.budget=4", "--config.search.steps_per_member=3",
                "--config.scorer.chunk=4", "--config.scorer.channels=4", "--config.scorer.image_size=8", "--config.search.seeds=1")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in open(tmp_path / "random" / "seed_0" / "history.jsonl")]
    assert len(rows) == 4 and all(0 <= r["score"] <= 100 and r["strategy"] == "random" for r in rows)
    best = json.load(open(tmp_path / "best.json"))
    assert best["score"] == max(r["score"] for r in rows) and "--model=nas_cell" in proc.stdout


def test_training_scorer_is_one_chunked_program_and_shards_over_devices(monkeypatch):
    """A batch of 6 codes with scorer.chunk=4 is one train_population call (2 chunks by lax.map,
    padded); scorer.devices=2 splits each chunk over 2 devices and gives the same scores."""
    from archlab.train.nas import scorer
    from archlab.train.nas.scorer import Scorer

    small = {"search.steps_per_member": "3", "scorer.chunk": "4", "scorer.channels": "4", "scorer.image_size": "8"}
    codes = np.array([[3, 2, 1, 4, 0, 3], [1, 1, 1, 1, 1, 1], [3, 3, 3, 3, 3, 3], [4, 0, 2, 1, 3, 2], [2, 3, 0, 3, 2, 1],
                      [0, 3, 3, 2, 4, 1]])
    calls = []
    real = scorer.train_population
    monkeypatch.setattr(scorer, "train_population", lambda codes, *a, **k: calls.append((len(codes), k)) or real(codes, *a, **k))
    one = Scorer(apply_nas_overrides(nas_config(), small)).score_fn(codes, 0)
    assert [(n, k["chunk"], k["devices"]) for n, k in calls] == [(8, 4, 1)]
    two = Scorer(apply_nas_overrides(nas_config(), {**small, "scorer.devices": "2"})).score_fn(codes, 0)
    assert calls[-1][1]["devices"] == 2 and one.shape == (6,)
    np.testing.assert_allclose(two, one, atol=100 / 288 + 1e-6)  # at most one of 288 validation images may flip (float reassociation)


@pytest.mark.parametrize("args,message", [
    (["--strategy=annealing"], "invalid choice: 'annealing'"),
    (["--strategy=random", "--config.search.budget=0"], "search.budget must be > 0"),
    (["--strategy=evolution", "--config.search.population=-2"], "search.population must be > 0"),
    (["--strategy=random", "--config.scorer.kind=table"], "needs --config.scorer.table=PATH"),
    (["--strategy=random", "--config.scorer.kind=table", "--config.scorer.table=/nonexistent/nb201.csv"], "/nonexistent/nb201.csv"),
    (["--strategy=random", "--config.scorer.chunk=100000000"], "use a smaller chunk (--config.scorer.chunk"),
    (["--strategy=random", "--config.scorer.devices=3"], "scorer.devices=3 must divide scorer.chunk=8"),
    (["--strategy=random", "--config.scorer.devices=2"], "scorer.devices=2 but 1 devices are visible"),
    (["--strategy=random", "--config.search.space=dense", "--config.scorer.devices=2", "--config.scorer.chunk=8"],
     "scorer.devices > 1 shards trained cell populations"),
    (["--strategy=random", "--config.search.bogus=1"], "unknown config key config.search.bogus"),
])
def test_bad_input_is_one_line_and_keeps_the_workdir(tmp_path, args, message):
    (tmp_path / "best.json").write_text('{"kept": true}')
    proc = _nas(*args, f"--workdir={tmp_path}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert json.load(open(tmp_path / "best.json")) == {"kept": True}


def test_malformed_table_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("arch,accuracy\n|conv9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|,50\n")
    proc = _nas("--strategy=random", f"--workdir={tmp_path / 'w'}", "--config.scorer.kind=table", f"--config.scorer.table={bad}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "conv9x9" in proc.stderr and "nor_conv_3x3" in proc.stderr


def test_two_processes_share_one_population_and_match_one_process(tmp_path):
    """launch.nas on 2 processes x 2 CPU devices (jax.distributed, gloo over 127.0.0.1): each chunk
    of 4 cells is split over all 4 devices of both hosts, both processes see every score, only
    process 0 writes, and the history equals a one-process run."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(cli_env(), XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    search = ["--strategy=random", "--config.search.budget=8", "--config.search.batch_size=8", "--config.search.steps_per_member=3",
              "--config.scorer.chunk=4", "--config.scorer.channels=4", "--config.scorer.image_size=8"]
    procs = [subprocess.Popen([sys.executable, "-m", "launch.nas", *search, f"--workdir={tmp_path / 'two'}", "--config.scorer.devices=4",
                               "--config.parallel.distributed=explicit", f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
             for i in range(2)]
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "best:" in outputs[0] and "best:" not in outputs[1]  # process 0 reports
    one = _nas(*search, f"--workdir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr
    two_rows, one_rows = (_rows(tmp_path / w / "random" / "seed_0" / "history.jsonl") for w in ("two", "one"))
    assert [g for g, _ in two_rows] == [g for g, _ in one_rows] and len(one_rows) == 8
    np.testing.assert_allclose([s for _, s in two_rows], [s for _, s in one_rows], atol=100 / 288 + 1e-6)


def test_search_shows_progress_per_member_batch_unless_no_progress(tmp_path):
    from archlab.train.nas.benchmark_table import generate_table

    table = str(tmp_path / "table.csv")
    generate_table(table)
    flags = ["--strategy=evolution", "--config.scorer.kind=table", f"--config.scorer.table={table}", "--config.search.budget=40"]
    shown = _nas(*flags, f"--workdir={tmp_path / 'a'}")
    assert shown.returncode == 0, shown.stderr
    frames = shown.stdout.replace("\r", "\n")
    assert "evolution seed 0:" in frames and "40/40" in frames and "cell/s" in frames and "best=" in frames
    quiet = _nas(*flags, f"--workdir={tmp_path / 'b'}", "--no_progress")
    assert quiet.returncode == 0 and "cell/s" not in quiet.stdout and "best:" in quiet.stdout

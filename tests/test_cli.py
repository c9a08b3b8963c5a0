"""The real CLI in subprocesses: end to end, resume, SIGTERM, NaN, sampling, and bad input."""

import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, assert_one_line_error, cli_env, run_cli, tiny_cli_flags, tree_digest


def train(workdir, **overrides):
    return run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", "--no_progress", *tiny_cli_flags(**overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "transformer"
    proc = train(workdir, train__steps=40, train__learning_rate="3e-3", checkpoint__every=20)
    assert proc.returncode == 0, proc.stderr
    return workdir, proc


def test_end_to_end_loss_falls_and_prints_summary(trained):
    workdir, proc = trained
    assert "validation at step 40" in proc.stdout and "bits per byte" in proc.stdout
    assert "sample (16 bytes after 'The ')" in proc.stdout
    train_losses = [r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl")) if r["split"] == "train"]
    assert train_losses[-1] < train_losses[0] - 1.0
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]
    assert (workdir / "plots" / "loss.png").exists() and (workdir / "config.json").exists()


def test_same_workdir_resumes(trained, tmp_path):
    workdir, _ = trained
    proc = train(workdir, train__steps=45, train__learning_rate="3e-3", checkpoint__every=20)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 40" in proc.stdout and "validation at step 45" in proc.stdout


def test_sample_uses_the_latest_checkpoint(trained):
    workdir, _ = trained
    proc = run_cli("launch.sample", f"--workdir={workdir}", "--prompt=def ", "--length=30", "--temperature=0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("def ") and len(proc.stdout.rstrip("\n").encode("utf-8", "replace")) >= 30
    again = run_cli("launch.sample", f"--workdir={workdir}", "--prompt=def ", "--length=30", "--temperature=0")
    assert again.stdout == proc.stdout


def test_train_on_a_user_text_file(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    proc = train(tmp_path / "run", data__path=str(text), train__steps=60, train__learning_rate="1e-2")
    assert proc.returncode == 0, proc.stderr
    info = json.load(open(tmp_path / "run" / "config.json"))
    assert info["data_source"] == str(text)
    final = [r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["split"] == "eval"][-1]
    assert final["bits_per_byte"] < 3.5  # below the text's unigram entropy (~4.1 bits): it learnt context


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    workdir = tmp_path / "run"
    flags = tiny_cli_flags(train__steps=100000, checkpoint__every=100000, train__log_every=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--model=transformer", f"--workdir={workdir}", "--no_progress", *flags],
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
        time.sleep(0.5)
    assert (workdir / "metrics.jsonl").exists(), proc.stderr
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "received SIGTERM: saved checkpoint at step" in out
    step = int(out.split("saved checkpoint at step ")[1].split()[0])
    assert step >= 2 and os.listdir(workdir / "checkpoints") == [str(step)]


def test_non_finite_loss_stops_naming_the_step_without_a_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    proc = train(workdir, model__dtype="float16", train__learning_rate="1e4", train__grad_clip="0",
                 train__warmup_steps="0", train__log_every="1", checkpoint__every="1", train__steps="30")
    assert_one_line_error(proc, "loss became non-finite at step", code=1)
    bad_step = int(proc.stderr.split("non-finite at step ")[1].split(";")[0])
    saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert all(s < bad_step for s in saved)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--model=nope"], ["unknown model 'nope'", "valid models: ", "transformer"]),
        (["--model=transformer", "--config.train.stepz=5"], ["unknown config key config.train.stepz", "steps"]),
        (["--model=transformer", "--config.train.steps=many"], ["config.train.steps", "'many' is not a valid int"]),
        (["--model=transformer", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["--model=transformer", "--config.data.path=/nonexistent/x.txt"], ["data file '/nonexistent/x.txt' does not exist"]),
        (["--model=gan", "--config.data.dataset=cats"], ["data.dataset must be one of ring, digits", "'cats'"]),
        (["--model=gan", "--config.train.group_learning_rates=critic:1e-3"], ["bad train.group_learning_rates entry 'critic:1e-3'",
                                                                              "generator, discriminator"]),
        (["--model=gan", "--config.data.path=/tmp/x.npz"], ["data.dataset=ring is generated"]),
        (["--model=lstm_classifier", "--config.data.path=/nonexistent"], ["is not a directory"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragments, tmp_path):
    proc = run_cli("launch.train", f"--workdir={tmp_path / 'w'}", *args)
    assert_one_line_error(proc, *fragments)


def test_empty_data_file_and_bad_workdirs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert_one_line_error(train(tmp_path / "w", data__path=str(empty)), "is empty")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_one_line_error(train(a_file), "is a file, not a directory")
    assert_one_line_error(train(a_file / "sub"), "is not writable")


def test_bad_input_leaves_existing_checkpoints_untouched(trained):
    workdir, _ = trained
    before = tree_digest(workdir / "checkpoints")
    for extra in (["--config.train.steps=x"], ["--config.nope=1"], ["--config.data.path=/missing.txt"]):
        proc = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", *extra)
        assert proc.returncode == 2
    # a different model config against this run is a config error, not damage
    proc = train(workdir, model__d_model="16")
    assert_one_line_error(proc, "model.d_model: 32 in", "16 given", "changes the model shape")
    assert tree_digest(workdir / "checkpoints") == before


def _corrupt(step_dir):
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def test_corrupt_latest_checkpoint_falls_back_then_refuses_when_none_intact(tmp_path):
    workdir = tmp_path / "run"
    assert train(workdir, train__steps=20, checkpoint__every=10).returncode == 0
    _corrupt(workdir / "checkpoints" / "20")
    proc = train(workdir, train__steps=25, checkpoint__every=10)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint step 20" in proc.stdout and "unreadable" in proc.stdout
    assert "resuming from step 10" in proc.stdout and "validation at step 25" in proc.stdout
    assert "20.unreadable" in os.listdir(workdir / "checkpoints")

    for step in os.listdir(workdir / "checkpoints"):
        if step.isdigit():
            _corrupt(workdir / "checkpoints" / step)
    before = tree_digest(workdir / "checkpoints")
    proc = train(workdir, train__steps=40, checkpoint__every=10)
    assert proc.returncode == 2
    assert "no intact checkpoint" in proc.stderr and "refusing to start over" in proc.stderr
    assert tree_digest(workdir / "checkpoints") == before


def test_help_lists_flags_and_config_keys():
    proc = run_cli("launch.train", "--help")
    assert proc.returncode == 0 and "--workdir" in proc.stdout and "--config.train.steps=" in proc.stdout
    proc = run_cli("launch.sample", "--help")
    assert proc.returncode == 0 and "--prompt" in proc.stdout


def _readme_blocks(with_docs: bool = False):
    """The fenced code blocks of README.md (and, ``with_docs``, of docs/*.md)."""
    # docs/adding_a_model.md's commands need its example family registered: tests/test_adding_a_model.py runs them
    docs = [path for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))) if not path.endswith("adding_a_model.md")]
    paths = [os.path.join(REPO, "README.md")] + (docs if with_docs else [])
    text = "\n".join(open(path).read() for path in paths)
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append("\n".join(current))
            inside, current = not inside, []
        elif inside:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command_verbatim():
    commands = [b.strip() for b in _readme_blocks() if "pytest" in b and b.strip().startswith("python3 -m venv")]
    assert len(commands) == 1
    assert commands[0] in open(os.path.join(REPO, ".ci", "run")).read()


def _readme_launch_commands(with_env: bool = False) -> list:
    """Every ``python -m launch.X ...`` in the code blocks of README.md and docs/*.md, as argv after
    ``python -m`` (shell loops and ``&``/``;`` tails cut; ``$i`` is process 0); ``with_env``:
    (``VAR=value`` prefixes as a dict, argv) pairs."""
    joined = "\n".join(_readme_blocks(with_docs=True)).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        if "python -m launch." not in line:
            continue
        command = line[line.index("python -m launch.") :]
        command = command.split(" & ")[0].split(";")[0].replace("$i", "0")
        args = shlex.split(command, comments=True)[2:]  # a trailing "# ..." is a shell comment
        prefix = [t for t in line[: line.index("python -m launch.")].split() if "=" in t]
        env = dict(t.split("=", 1) for t in prefix if t.split("=", 1)[0].isupper())
        commands.append((env, args) if with_env else args)
    return commands


def test_every_readme_launch_command_parses(tmp_path):
    commands = _readme_launch_commands(with_env=True)
    assert sum(c[0] == "launch.train" for _, c in commands) >= 6
    for env, args in commands:
        if args[0] == "launch.train" and not any(a.startswith(("--model", "--config=")) for a in args):
            continue  # a resume (--workdir alone): tests/test_cli_resume.py runs it on a trained workdir
        probe = "--dry_run" if args[0] == "launch.train" else "--help"
        proc = run_cli(*args, probe, env=env)  # XLA_FLAGS=... before a command sets its devices (the dry run checks the mesh)
        assert proc.returncode == 0, (args, proc.stderr)
        if probe == "--dry_run":
            assert "dry run OK" in proc.stdout


def test_summary_prints_parameters_per_module_and_xla_flops_without_training(tmp_path):
    proc = run_cli("launch.train", "--model=mlp", f"--workdir={tmp_path / 'w'}", "--summary", "--config.model.hidden=32")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith(("dense_", "head"))}
    assert "2,080" in rows["dense_0"] and "kernel[64, 32]" in rows["dense_0"]  # 64*32 + 32
    assert "330" in rows["head"]
    assert any(line.startswith("total") and "2,410" in line for line in lines)  # + 32*10 + 10
    flops = [line for line in lines if line.startswith("FLOPs per example")][0]
    forward = float(flops.split("forward ")[1].split()[0])
    assert 4.0 <= forward <= 6.0  # KFLOP: 2 * (64*32 + 32*10) = 4.7 K for the two matmuls, plus bias/relu/softmax-free head
    assert not (tmp_path / "w").exists()

"""Resume as a user expects, and the CLI papercuts (issue 23, points 5 and 7), run as a user runs them:
``python -m launch.X`` in a subprocess on one CPU device."""

import json
import os
import shlex
import shutil

import pytest
from conftest import REPO, assert_one_line_error, run_cli, tiny_cli_flags, tree_digest

README_WORKDIR = "runs/small"


def steps(workdir):
    return sorted(os.listdir(workdir / "checkpoints"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny transformer run as the README's first command makes one: 200 steps, its own overrides."""
    workdir = tmp_path_factory.mktemp("resume") / "small"
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", "--no_progress",
                   *tiny_cli_flags(train__steps=200, checkpoint__every=100, train__eval_every=100, train__log_every=100))
    assert proc.returncode == 0, proc.stderr
    assert steps(workdir) == ["100", "200"]
    return workdir


def copy_of(trained, tmp_path):
    workdir = tmp_path / "small"
    shutil.copytree(trained, workdir)
    return workdir


def test_workdir_alone_resumes_with_the_saved_config(trained, tmp_path):
    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "200")  # as if the run had stopped after step 100
    proc = run_cli("launch.train", f"--workdir={workdir}", "--no_progress")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 100" in proc.stdout and "validation at step 200" in proc.stdout
    config = json.loads((workdir / "config.json").read_text())["config"]
    assert config["model"]["num_layers"] == 2 and config["model"]["d_model"] == 32 and config["train"]["steps"] == 200
    assert steps(workdir) == ["100", "200"]


def test_readme_resume_command_verbatim(trained, tmp_path):
    """The README's resume example, word for word, on a run like the one its first command trains."""
    text = open(os.path.join(REPO, "README.md")).read()
    line = text.split("# the workdir alone resumes")[1].split("```")[0]
    command = [c for c in line.splitlines() if c.startswith("python -m launch.train")][0]
    assert f"--workdir={README_WORKDIR}" in command and "--model" not in command
    workdir = copy_of(trained, tmp_path)
    args = shlex.split(command.replace(README_WORKDIR, str(workdir)))[2:]
    proc = run_cli(*args, "--no_progress")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 200" in proc.stdout and "validation at step 400" in proc.stdout
    config = json.loads((workdir / "config.json").read_text())["config"]
    assert config["train"]["steps"] == 400 and config["model"]["num_layers"] == 2


def test_model_shape_change_is_refused_touching_nothing(trained):
    before = tree_digest(trained)
    proc = run_cli("launch.train", f"--workdir={trained}", "--config.model.num_layers=3")
    assert_one_line_error(proc, f"model.num_layers: 2 in {os.path.join(trained, 'config.json')}, 3 given", "model shape")
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={trained}")  # the defaults: every shape field differs
    assert_one_line_error(proc, "model.num_layers: 2 in", "4 given", "model.d_model: 32 in")
    assert tree_digest(trained) == before and steps(trained) == ["100", "200"]


def test_checkpoint_shape_mismatch_is_not_damage(trained, tmp_path):
    """Without config.json to compare against, the checkpoints' shapes catch it: one line, nothing renamed."""
    workdir = copy_of(trained, tmp_path)
    os.remove(workdir / "config.json")
    before = tree_digest(workdir / "checkpoints")
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", *tiny_cli_flags(model__num_layers=3))
    assert_one_line_error(proc, "checkpoint step 200", "different model/optimizer config", "params/", "in this config but not in",
                          "config.json")
    assert "no intact checkpoint" not in proc.stderr
    proc = run_cli("launch.train", "--model=transformer", f"--workdir={workdir}", *tiny_cli_flags(model__d_model=16))
    assert_one_line_error(proc, "params/", "in the checkpoint but", "in this config")
    assert tree_digest(workdir / "checkpoints") == before and steps(workdir) == ["100", "200"]


def test_workdir_without_a_run_asks_for_a_model(tmp_path):
    assert_one_line_error(run_cli("launch.train", f"--workdir={tmp_path}"), "--model=NAME or --config=", "holds no run's config.json")


def test_dry_run_checks_the_mesh(tmp_path):
    flags = ["--model=transformer", f"--workdir={tmp_path / 'w'}", "--dry_run", *tiny_cli_flags()]
    proc = run_cli("launch.train", *flags, "--config.parallel.num_devices=3",
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
    assert_one_line_error(proc, "does not split over 3 data shards", "parallel.num_devices", "CUDA_VISIBLE_DEVICES",
                          "--config.train.batch_size")
    proc = run_cli("launch.train", *flags)
    assert proc.returncode == 0, proc.stderr
    assert "dry run OK" in proc.stdout and "mesh data:1" in proc.stdout


def test_missing_cuda_plugin_is_one_line(tmp_path):
    proc = run_cli("launch.train", "--model=mlp", f"--workdir={tmp_path / 'w'}", env={"JAX_PLATFORMS": "cuda"})
    assert_one_line_error(proc, "JAX_PLATFORMS=cuda", "CUDA plugin", "cpu")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("entry", ["train", "nas", "export", "benchmark", "sample", "quantize", "tokenizer"])
def test_help_shows_defaults(entry):
    proc = run_cli(f"launch.{entry}", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "(default: " in proc.stdout or "default" in proc.stdout, proc.stdout
    if entry in ("benchmark", "export", "sample"):
        assert "(default: " in proc.stdout, proc.stdout  # argparse defaults, not only hand-written ones


def test_benchmark_tiny_without_suite_runs_every_tiny_suite(tmp_path):
    """Runs train, compile and data on tiny shapes, one repeat each (the suites with a tiny mode)."""
    from archlab.bench.suites import SUITES, supports_tiny

    out = tmp_path / "bench.json"
    proc = run_cli("launch.benchmark", "--tiny", "--repeats=1", f"--out={out}", timeout=240)
    assert proc.returncode == 0, proc.stderr
    tiny = [name for name in SUITES if supports_tiny(name)]
    assert tiny and set(json.loads(out.read_text())) == {"machine", *tiny}


def test_export_without_formats_exports_what_this_machine_can(tmp_path):
    from archlab.deploy.pipeline import supported_formats

    workdir = tmp_path / "cnn"
    flags = ["--config.train.steps=2", "--config.train.batch_size=8", "--config.train.warmup_steps=1", "--config.train.eval_every=2",
             "--config.train.eval_batches=1", "--config.checkpoint.every=2", "--config.model.channels=4,8", "--config.model.dense=16",
             "--config.data.image_size=8"]
    assert run_cli("launch.train", "--model=cnn", f"--workdir={workdir}", "--no_progress", *flags).returncode == 0
    formats, lacking = supported_formats()
    proc = run_cli("launch.export", f"--workdir={workdir}", "--batch=1,2,4", timeout=240)
    if not formats:
        assert_one_line_error(proc, "can export no format")
        return
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "export" / "export_report.json").read_text())
    exported = {name.split("_fp")[0] for name in report["formats"]}
    assert exported == set(formats), (exported, formats)
    if "tensorrt" in lacking:
        assert "not tensorrt (needs" in proc.stderr

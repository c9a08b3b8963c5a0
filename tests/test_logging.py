"""TensorBoard output, cluster-log lines and profiling, run as a user runs them and read back with
TensorBoard's own reader."""

import contextlib
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from conftest import assert_one_line_error, run_cli

pytest.importorskip("tensorboard", reason="reading event files needs tensorboard: pip install -e '.[tensorboard]'")

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step (\d+)/(\d+) \| loss [\d.]+ \| [\d.]+ steps/s \| ETA \S+$")


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(logdir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@contextlib.contextmanager
def _tensorboard_server(logdir):
    """``tensorboard --logdir LOGDIR`` as the README runs it (on a free port); yields a JSON getter."""
    command = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen([command, "--logdir", str(logdir), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in server.stdout:
            match = re.search(r"(http://\S+?/)", line)
            if match:
                url = match.group(1)
                break
        assert url, "tensorboard exited without serving"

        def get(path):
            with urllib.request.urlopen(url + path, timeout=60) as response:
                body = response.read()
                return json.loads(gzip.decompress(body) if response.headers.get("Content-Encoding") == "gzip" else body)

        yield get
    finally:
        server.kill()
        server.wait()


def test_gan_run_writes_scalars_config_and_figures_and_timestamped_lines(tmp_path):
    workdir = tmp_path / "gan"
    proc = run_cli("launch.train", "--model=gan", f"--workdir={workdir}", "--no_progress", "--config.train.steps=4",
                   "--config.train.batch_size=16", "--config.train.log_every=2", "--config.train.eval_every=2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [m.groups() for m in map(TIMESTAMPED.match, proc.stdout.splitlines()) if m]
    assert lines == [("2", "4"), ("4", "4")], proc.stdout
    assert "step 2: samples loss" in proc.stdout  # the eval line stays

    events = _events(str(workdir / "tensorboard"))
    tags = events.Tags()
    assert {"train/loss", "train/steps_per_s", "eval/loss"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    # figures: the samples grid at each evaluation (one tag, a step slider) and the loss curves at the end
    assert {"plots/samples", "plots/loss"} <= set(tags["images"])
    assert [e.step for e in events.Images("plots/samples")] == [2, 4]
    image = events.Images("plots/loss")[0]
    assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 100
    # the resolved config: as text and as hparams (every leaf, flattened)
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text)["train"]["steps"] == 4
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.steps"].number_value == 4
    assert start.hparams["model_name"].string_value == "gan"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"train/loss", "eval/loss"}


def test_profile_steps_writes_a_trace_for_the_profile_tab(tmp_path):
    workdir = tmp_path / "mlp"
    proc = run_cli("launch.train", "--model=mlp", f"--workdir={workdir}", "--no_progress", "--config.train.steps=8",
                   "--config.train.log_every=4", "--config.train.eval_every=8", "--config.train.profile_steps=3:2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "profiled steps 4-5 into" in proc.stdout
    traces = glob.glob(str(workdir / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    # the profile plugin finds the run where TensorBoard looks for it (a run directory under plugins/profile)
    from tensorboard.backend.event_processing import plugin_asset_util

    assert plugin_asset_util.ListAssets(str(workdir / "tensorboard"), "profile") == [os.path.basename(os.path.dirname(traces[0]))]
    # the README's command: `tensorboard --logdir WORKDIR/tensorboard` serves the scalars (and the Profile tab's run)
    with _tensorboard_server(workdir / "tensorboard") as get:
        assert "train/loss" in get("data/plugin/scalars/tags")["."]
        listing = get("data/plugins_listing")
        assert listing["scalars"]["enabled"] and listing["hparams"]["enabled"]
        if "profile" in listing:  # tensorboard-plugin-profile (the tensorboard extra)
            runs = get("data/plugin/profile/runs")
            assert runs and os.path.basename(os.path.dirname(traces[0])) in json.dumps(runs), runs

    # export writes its parity errors and table through the same writer, into OUT/tensorboard
    pytest.importorskip("jax2onnx", reason="the onnx export needs the export extra")
    proc = run_cli("launch.export", f"--workdir={workdir}", "--formats=onnx", timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = _events(str(workdir / "export" / "tensorboard"))
    assert {"export/onnx_max_abs", "export/onnx_max_rel"} <= set(events.Tags()["scalars"])
    assert events.Scalars("export/onnx_max_abs")[0].step == 8
    assert "| onnx |" in events.Tensors("parity/text_summary")[0].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("value, fragment", [("5", "START:COUNT"), ("3:0", "COUNT >= 1"), ("a:b", "START:COUNT"),
                                             ("15:10", "runs past train.steps=20")])
def test_bad_profile_steps_is_one_line_and_exit_2(value, fragment):
    from archlab.train.config import ConfigError, apply_overrides, get_config

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        apply_overrides(get_config("mlp"), {"train.steps": "20", "train.profile_steps": value})


def test_bad_profile_steps_on_the_cli(tmp_path):
    proc = run_cli("launch.train", "--model=mlp", f"--workdir={tmp_path / 'w'}", "--config.train.profile_steps=10", timeout=60)
    assert_one_line_error(proc, "train.profile_steps", "START:COUNT")
    assert not (tmp_path / "w").exists()


def test_benchmark_profile_wraps_the_suites_in_a_trace(tmp_path):
    import jax.numpy as jnp

    from archlab.bench.suites import profiled

    with profiled(str(tmp_path / "trace")):
        (jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()
    assert glob.glob(str(tmp_path / "trace" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    (tmp_path / "file").write_text("x")
    proc = run_cli("launch.benchmark", "--suite=train", "--tiny", f"--out={tmp_path / 'b.json'}", f"--profile={tmp_path / 'file'}", timeout=60)
    assert_one_line_error(proc, "--profile", "is a file")


def test_nas_search_writes_its_config_scores_and_plots_to_tensorboard(tmp_path):
    from archlab.train.nas.benchmark_table import generate_table
    from archlab.train.nas.config import apply_nas_overrides, nas_config
    from archlab.train.nas.runner import run_strategies

    table = str(tmp_path / "nb201.csv")
    generate_table(table, 0)
    config = apply_nas_overrides(nas_config(), {"scorer.kind": "table", "scorer.table": table, "search.budget": "20", "search.seeds": "1"})
    run_strategies(config, ["random"], str(tmp_path / "nas"), echo=lambda *a, **k: None)
    events = _events(str(tmp_path / "nas" / "tensorboard"))
    assert {"nas/best_score", "nas/random_best_mean"} <= set(events.Tags()["scalars"])
    assert {"plots/best_so_far", "plots/op_frequencies_random"} <= set(events.Tags()["images"])
    assert json.loads(events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode())["search"]["budget"] == 20

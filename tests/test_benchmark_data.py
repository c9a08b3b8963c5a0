"""The ``data`` benchmark suite on seconds-sized shapes: JSON layout, rates, ratios and the report (no timing asserts)."""

import json
import math
import os
import tempfile

import pytest

from archlab.bench import data as data_suite
from archlab.bench.suites import select_suites, supports_tiny

DEFAULT_KEYS = {"pipeline_per_s", "pipeline_sync_per_s", "step_per_s", "unit", "pipeline_over_step", "ok"}
PIPELINE_KEYS = {"unit", "workers", "batch"}
FORMATS = {"cifar10", "npz", "tfrecord", "array_record", "image_folder", "tokens", "text"}


def _positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny suite, with its temporary files in a directory of its own (another test's benchmark
    run may have its own in the shared temporary directory meanwhile); returns what it left there."""
    private = str(tmp_path_factory.mktemp("tempdir"))
    saved, tempfile.tempdir = tempfile.tempdir, private
    try:
        result = data_suite.run_suite(tiny=True)
    finally:
        tempfile.tempdir = saved
    return result, {n for n in os.listdir(private) if n.startswith("archlab-bench-data-")}


def test_data_is_a_suite_with_a_tiny_mode():
    assert select_suites("data") == ["data"] and "data" in select_suites("all")
    assert supports_tiny("data")


def test_defaults_measure_pipeline_and_step_for_each_model(tiny_run):
    result, _ = tiny_run
    json.dumps(result)  # the report is JSON
    assert set(result["defaults"]) == {"cnn", "resnet18", "transformer"}
    for model, r in result["defaults"].items():
        assert DEFAULT_KEYS <= set(r), (model, set(r))
        assert r["unit"] == ("tokens" if model == "transformer" else "examples")
        for key in ("pipeline_per_s", "pipeline_sync_per_s", "step_per_s", "pipeline_over_step"):
            assert _positive_finite(r[key]), (model, key, r[key])
        assert r["pipeline_over_step"] == pytest.approx(r["pipeline_per_s"] / r["step_per_s"])
        assert r["ok"] is (r["pipeline_over_step"] >= data_suite.REQUIRED_RATIO)
    transformer = result["defaults"]["transformer"]
    assert transformer["step_per_s"] == pytest.approx(transformer["batch"] * transformer["seq_len"] / transformer["step_s"])
    assert result["all_ok"] is all(r["ok"] for r in result["defaults"].values())


def test_every_pipeline_is_measured_on_generated_files_then_removed(tiny_run):
    result, left_behind = tiny_run
    pipelines = result["pipelines"]
    assert FORMATS <= set(pipelines)
    assert not left_behind
    for name, r in pipelines.items():
        assert PIPELINE_KEYS <= set(r), (name, set(r))
        if "error" in r:  # only worker processes may fail (reported, not raised)
            assert r["workers"] > 0, (name, r["error"])
            continue
        assert _positive_finite(r["per_s"]), (name, r["per_s"])
        assert r["unit"] == ("tokens" if name in ("tokens", "text") else "examples")
    assert pipelines["tfrecord_workers2"]["workers"] == 2


def test_markdown_names_each_model_and_states_the_verdict(tiny_run):
    result, _ = tiny_run
    text = "\n".join(data_suite.markdown_table(result))
    for model in ("cnn", "resnet18", "transformer"):
        assert f"| {model} (" in text
    for name in FORMATS:
        assert f"| {name}: " in text
    assert "not the bottleneck" in text or "BOTTLENECK" in text
    assert ">= 3x" in text


def test_markdown_flags_a_bottleneck():
    record = {"pipeline_per_s": 200.0, "pipeline_sync_per_s": 150.0, "step_per_s": 100.0, "unit": "examples",
              "pipeline_over_step": 2.0, "ok": False, "batch": 64, "prefetch": 2, "workers": 0, "image_size": [32, 32, 3]}
    result = {"defaults": {"resnet18": record}, "pipelines": {}, "all_ok": False, "required_ratio": 3.0}
    rows = data_suite.markdown_table(result)
    assert "BOTTLENECK" in rows[2] and "2.0x" in rows[2]
    assert rows[-1].startswith("NOT every") and "resnet18" in rows[-1]


def test_a_failing_worker_pipeline_is_reported_not_raised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("worker process was terminated\nunexpectedly")

    monkeypatch.setattr(data_suite, "make_dataset", broken)  # the name bench/data.py calls
    settings = {"file_batches": 1, "file_warmup": 0}
    record = data_suite.measure_pipeline("tfrecord", "/nonexistent", 2, tiny=True, **settings)
    assert record["error"] == "RuntimeError: worker process was terminated unexpectedly" and record["workers"] == 2
    with pytest.raises(RuntimeError):
        data_suite.measure_pipeline("tfrecord", "/nonexistent", 0, tiny=True, **settings)

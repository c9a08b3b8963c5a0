"""The benchmark CLI's bad input, and the library's JSON layout on a tiny transformer (no timing asserts)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, cli_env

from bench import BenchmarkError
from bench.xla_flags import host_device_count, with_host_device_count

TINY_OVERRIDES = {
    "model.d_model": "32",
    "model.num_layers": "2",
    "model.num_heads": "2",
    "model.mlp_dim": "64",
    "model.max_len": "32",
    "data.seq_len": "32",
    "train.batch_size": "8",
}
MACHINE_KEYS = {"cpu", "cores", "jax", "jaxlib", "xla_flags", "peak_flops"}
PARALLEL_KEYS = {"sharded_over_single", "single_step_s", "sharded_step_s", "devices", "mesh", "global_batch"}


def run_benchmark(*args):
    return subprocess.run(
        [sys.executable, "-m", "launch.benchmark", *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


def test_unknown_suite_is_one_line_naming_the_valid_suites(tmp_path):
    proc = run_benchmark("--suite=bogus", f"--out={tmp_path / 'b.json'}")
    assert_one_line_error(proc, "'bogus'", "parallel", "all")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("where", ["missing_dir", "directory"])
def test_unwritable_out_is_one_line(tmp_path, where):
    out = tmp_path / "no_such_dir" / "b.json" if where == "missing_dir" else tmp_path
    proc = run_benchmark("--suite=parallel", f"--out={out}")
    assert_one_line_error(proc, "--out", str(out))


def test_device_count_flag_is_appended_unless_already_set():
    assert with_host_device_count("", 2) == "--xla_force_host_platform_device_count=2"
    assert with_host_device_count("--xla_cpu_foo=1", 2) == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2"
    kept = "--xla_force_host_platform_device_count=8 --xla_cpu_foo=1"
    assert with_host_device_count(kept, 2) == kept
    assert host_device_count(kept) == 8 and host_device_count("--xla_cpu_foo=1") is None


def test_select_suites():
    from bench.suites import select_suites, suite_names

    assert select_suites("all") == [s for s in suite_names() if s != "all"]
    assert select_suites("parallel") == ["parallel"]
    with pytest.raises(BenchmarkError, match="valid suites: parallel"):
        select_suites("train-ish")


def test_check_writable_leaves_an_existing_file_alone(tmp_path):
    from bench.report import check_writable

    out = tmp_path / "b.json"
    out.write_text("keep")
    check_writable(str(out))
    assert out.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_peak_flops_at_small_sizes():
    from bench.machine import peak_flops

    peak = peak_flops((64, 128), repeats=2, warmup=1)
    assert peak["flops"] > 0 and peak["n"] in (64, 128)
    assert set(peak["per_size"]) == {"64", "128"} and peak["flops"] == max(peak["per_size"].values())


def test_parallel_needs_enough_devices():
    import jax

    from bench.parallel import measure

    with pytest.raises(BenchmarkError, match="needs"):
        measure(overrides=TINY_OVERRIDES, devices=jax.device_count() + 1, repeats=1)


@pytest.fixture(scope="module")
def tiny_results():
    from bench.machine import machine_info
    from bench.parallel import measure

    return {
        "machine": machine_info(peak_sizes=(64,), peak_repeats=2),
        "parallel": measure(overrides=TINY_OVERRIDES, repeats=2, warmup=1, block=1),
    }


def test_json_layout_and_positive_numbers(tiny_results, tmp_path):
    from bench.report import write_json

    path = write_json(tiny_results, str(tmp_path / "b.json"))
    data = json.load(open(path))
    assert set(data) == {"machine", "parallel"}
    assert MACHINE_KEYS <= set(data["machine"])
    assert PARALLEL_KEYS <= set(data["parallel"])
    m, p = data["machine"], data["parallel"]
    assert m["cores"] >= 1 and m["peak_flops"] > 0 and isinstance(m["cpu"], str) and m["cpu"]
    assert isinstance(m["xla_flags"], str) and "device_count" in m["xla_flags"]
    for key in ("sharded_over_single", "single_step_s", "sharded_step_s", "single_tokens_per_s", "sharded_tokens_per_s"):
        assert p[key] > 0, key
    assert p["sharded_over_single"] == pytest.approx(p["sharded_step_s"] / p["single_step_s"])
    assert (p["devices"], p["mesh"], p["global_batch"], p["seq_len"]) == (2, "data:2", 8, 32)


def test_markdown_has_a_table_per_section(tiny_results):
    from bench.report import markdown

    text = markdown(tiny_results)
    assert "| cpu |" in text and "GFLOP/s" in text
    assert "| 1 device (data:1) |" in text and "| 2 devices (data:2) |" in text
    header_rows = [line for line in text.splitlines() if line.startswith("|---")]
    assert len(header_rows) == 2


def test_nas_suite_on_a_tiny_config():
    from bench.nas import markdown_table, measure, random_distinct_codes
    from bench.suites import select_suites

    assert select_suites("nas") == ["nas"]
    codes = random_distinct_codes(16)
    assert codes.shape == (16, 6) and len({tuple(c) for c in codes.tolist()}) == 16
    result = measure(population=2, steps=2, batch_size=8, image_size=8, channels=4, repeats=1)
    for key in ("vmap_member_steps_per_s", "loop_member_steps_per_s", "vmap_over_loop", "end_to_end_speedup",
                "vmap_end_to_end_s", "loop_end_to_end_s", "vmap_steady_s", "loop_steady_s"):
        assert result[key] > 0, key
    assert result["vmap_compile_s"] >= 0 and result["loop_compile_s"] >= 0
    assert result["vmap_over_loop"] == pytest.approx(result["vmap_member_steps_per_s"] / result["loop_member_steps_per_s"])
    assert (result["population"], result["steps"], result["batch"], result["image_size"], result["channels"]) == (2, 2, 8, 8, 4)
    assert result["max_val_accuracy_gap"] < 0.05  # both sides train the same cells from the same params
    json.dumps(result)
    rows = markdown_table(result)
    assert len(rows) == 4 and rows[1].startswith("|---") and "vmap" in rows[3]

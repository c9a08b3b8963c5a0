"""The benchmark CLI's bad input, and the library's JSON layout on a tiny transformer (no timing asserts)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, cli_env

from archlab.bench import BenchmarkError
from archlab.bench.xla_flags import host_device_count, with_host_device_count

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


def run_benchmark(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "launch.benchmark", *args], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=timeout
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
    from archlab.bench.suites import select_suites, suite_names

    assert select_suites("all") == [s for s in suite_names() if s != "all"]
    assert select_suites("parallel") == ["parallel"]
    with pytest.raises(BenchmarkError, match="valid suites: train, compile, parallel"):
        select_suites("train-ish")


def test_check_writable_leaves_an_existing_file_alone(tmp_path):
    from archlab.bench.report import check_writable

    out = tmp_path / "b.json"
    out.write_text("keep")
    check_writable(str(out))
    assert out.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_peak_flops_at_small_sizes():
    from archlab.bench.machine import peak_flops

    peak = peak_flops((64, 128), repeats=2, warmup=1)
    assert peak["flops"] > 0 and peak["n"] in (64, 128)
    assert set(peak["per_size"]) == {"64", "128"} and peak["flops"] == max(peak["per_size"].values())


def test_parallel_needs_enough_devices():
    import jax

    from archlab.bench.parallel import measure

    with pytest.raises(BenchmarkError, match="needs"):
        measure(overrides=TINY_OVERRIDES, devices=jax.device_count() + 1, repeats=1)


@pytest.fixture(scope="module")
def tiny_results():
    from archlab.bench.machine import machine_info
    from archlab.bench.parallel import measure

    return {
        "machine": machine_info(peak_sizes=(64,), peak_repeats=2),
        "parallel": measure(overrides=TINY_OVERRIDES, repeats=2, warmup=1, block=1),
    }


def test_json_layout_and_positive_numbers(tiny_results, tmp_path):
    from archlab.bench.report import write_json

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
    from archlab.bench.report import markdown

    text = markdown(tiny_results)
    assert "| cpu |" in text and "GFLOP/s" in text
    assert "| 1 device (data:1) |" in text and "| 2 devices (data:2) |" in text
    header_rows = [line for line in text.splitlines() if line.startswith("|---")]
    assert len(header_rows) == 2


def test_nas_suite_on_a_tiny_config():
    from archlab.bench.nas import markdown_table, measure, random_distinct_codes
    from archlab.bench.suites import select_suites

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


# --- train and compile suites


def test_transformer_flop_counter_matches_a_hand_count():
    """d_model 8, 2 layers, 2 heads, mlp 16, bytes; batch 2 x length 4 (hand count in the comments)."""
    import jax
    import numpy as np

    from archlab.arch import build_module
    from archlab.bench.train import transformer_train_flops

    module = build_module("transformer", vocab_size=256, num_layers=2, d_model=8, num_heads=2, mlp_dim=16, max_len=4)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), np.zeros((2, 4), np.int32))["params"]
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    # embed 256*8 = 2048; per layer: 2 LayerNorms 2*16, qkv 8*3*8 = 192, out 64, wi 128 + bi 16, wo 128 + bo 8
    # = 568, x2 = 1136; final LayerNorm 16 -> 3200
    assert params == 3200
    tokens = 2 * 4
    attention = 2 * 2 * (2 * 2 * 4 * 4 * 8) / 2 * 3  # layers x (QK^T + AV over the square) / causal x (fwd + bwd)
    assert attention == 6 * 2 * 2 * 4**2 * 8 == 3072
    count = dict(params=params, embedding_params=256 * 8, layers=2, d_model=8, batch=2, length=4)
    assert transformer_train_flops(**count, tied=True) == 6 * 3200 * tokens + 3072 == 156_672
    assert transformer_train_flops(**count, tied=False) == 6 * (3200 - 2048) * tokens + 3072  # a gather is no matmul


def test_slope_and_the_tiny_mode_registry():
    from archlab.bench.compile import slope
    from archlab.bench.suites import select_suites, supports_tiny

    assert slope([2, 4, 8, 12], [1.0, 2.0, 4.0, 6.0]) == pytest.approx(0.5)
    assert slope([1, 2], [3.0, 3.0]) == 0.0
    with pytest.raises(BenchmarkError, match="at least 2"):
        slope([4], [1.0])
    assert {"train", "compile"} <= set(select_suites("all"))
    assert supports_tiny("train") and supports_tiny("compile") and not supports_tiny("nas")


def test_tiny_is_refused_for_suites_without_it(tmp_path):
    proc = run_benchmark("--suite=nas", "--tiny", f"--out={tmp_path / 'b.json'}")
    assert_one_line_error(proc, "--tiny", "nas", "train, compile")


def test_train_suite_cli_in_tiny_mode_writes_the_json_layout(tmp_path):
    out = tmp_path / "b.json"
    proc = run_benchmark("--suite=train", "--tiny", f"--out={out}", timeout=600)  # minutes on a loaded 2-core box
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "train"} and MACHINE_KEYS <= set(data["machine"])
    assert set(data["train"]) == {"transformer", "cnn"}  # tiny mode leaves ResNet-18 out
    t = data["train"]["transformer"]
    assert {"step_s", "tokens_per_s", "mfu"} <= set(t)
    assert t["tokens_per_s"] == pytest.approx(8 * 32 / t["step_s"])  # tiny: batch 8 x length 32
    assert t["mfu"] == pytest.approx(t["model_flops"] / t["step_s"] / t["peak_flops_in_suite"])
    r = data["train"]["cnn"]
    assert {"step_s", "examples_per_s", "mfu"} <= set(r) and r["step_s"] > 0 and r["mfu"] > 0
    assert r["model_flops"] == r["xla_flops"] > 0  # convolutional models: XLA's count
    assert 0 < t["model_flops"] < t["xla_flops"]  # XLA also counts masked attention and elementwise work
    assert "| transformer (d_model 32, 2 layers" in proc.stdout and "MFU" in proc.stdout
    progress = [line.strip() for line in proc.stderr.splitlines() if line.startswith(("[1/1]", "  train ["))]
    assert [line.split(":")[0].split(" done")[0] for line in progress] == [
        "[1/1] running suite train ...", "train [1/2] transformer", "train [2/2] cnn", "[1/1] suite train"], progress


def test_compile_suite_on_a_tiny_transformer():
    from archlab.bench.compile import markdown_table, measure
    from archlab.bench.train import TINY_OVERRIDES

    result = measure(layers=(1, 2), overrides=TINY_OVERRIDES["transformer"], repeats=1)
    for variant in ("scan", "unrolled"):
        r = result[variant]
        assert r["layers"] == [1, 2] and len(r["compile_s"]) == 2 and min(r["compile_s"]) > 0
        assert r["slope_s_per_layer"] == pytest.approx(r["compile_s"][1] - r["compile_s"][0])
    assert result["unrolled_over_scan_at_deepest"] == pytest.approx(result["unrolled"]["compile_s"][1] / result["scan"]["compile_s"][1])
    json.dumps(result)
    assert result["floor_one_layer_s"] == result["unrolled"]["compile_s"][0]  # 1 layer measured: reused
    rows = markdown_table(result)
    assert len(rows) == 6 and rows[1].startswith("|---") and "scan over layers" in rows[3]
    assert all(row.count("|") == rows[0].count("|") for row in rows)


def test_compile_floor_bounds_the_ratio(monkeypatch):
    """The 1-layer unrolled compile is measured once per repeat when 1 is not among the depths,
    and unrolled-at-deepest / floor is reported as the bound on any scan's ratio."""
    import archlab.bench.compile as compile_suite

    calls = []

    def fake_compile_seconds(layers, scan, overrides=None):
        calls.append((layers, scan))
        return 2.0 + 0.25 * layers if not scan else 3.0

    monkeypatch.setattr(compile_suite, "compile_seconds", fake_compile_seconds)
    result = compile_suite.measure(layers=(2, 12), repeats=2)
    assert calls.count((1, False)) == 2 and (1, True) not in calls
    assert result["floor_one_layer_s"] == 2.25 and result["floor_one_layer_s_all"] == [2.25, 2.25]
    assert result["unrolled_over_scan_at_deepest"] == pytest.approx(5.0 / 3.0)
    assert result["bound_unrolled_over_scan_at_deepest"] == pytest.approx(5.0 / 2.25)
    assert "2.2x" in compile_suite.markdown_table(result)[-1]

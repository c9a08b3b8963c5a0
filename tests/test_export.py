"""Export: SavedModel (jax2tf), ONNX (jax2onnx), TensorRT (mocked at its boundary), parity and the CLI.

Every family round-trips to SavedModel and ONNX from one artifact at two batch sizes, on tiny
configs with freshly initialised params (the restore path is covered by the CLI test, which trains
a CNN for a few steps and exports its checkpoint). Tests skip with a stated reason where the
export packages are not installed.
"""

import json
import os
import re
import sys
import types

import numpy as np
import pytest

from conftest import MISSING_EXPORT_PACKAGES, assert_one_line_error, needs_export, run_cli, tiny_config

# ------------------------------------------------------------------------- every family, in process

# family -> (registry model, config changes); tiny so conversion takes seconds
FAMILIES = {
    "mlp": ("mlp", dict(data__image_size=8), {"hidden": (16,)}),
    "resnet18": ("resnet18", dict(data__image_size=8), {"width": 4}),
    "inception": ("inception", dict(data__image_size=8), {"stem_features": 8}),
    "nas_cell": ("nas_cell", dict(data__image_size=8), {"channels": 4}),
    "dehaze": ("dehaze", dict(data__image_size=8), {"width": 8}),
    "transformer": ("transformer", {}, {}),
    "transformer_scan": ("transformer", {}, {"scan_layers": True}),  # exported unrolled (deploy.inference_model.unrolled)
    "lstm": ("lstm", dict(data__seq_len=8), {"hidden": 16, "embed_dim": 8}),
    "gru": ("gru", dict(data__seq_len=8), {"hidden": 16, "embed_dim": 8}),
    "rnn": ("rnn", dict(data__seq_len=8), {"hidden": 16, "embed_dim": 8}),
    "lstm_classifier": ("lstm_classifier", dict(data__seq_len=8), {"hidden": 16, "embed_dim": 8}),
    "gan_points": ("gan", {}, {"sample_shape": (2,), "width": 16, "style_dim": 16}),
    "gan_images": ("gan", {}, {"sample_shape": (8, 8, 1), "width": 8, "style_dim": 16}),
    "gan_images_resized": ("gan", {}, {"sample_shape": (6, 6, 1), "width": 8, "style_dim": 16}),  # 4 -> 8, resized to 6
    "nerf": ("nerf", {}, {"width": 16}),
}


def initialised_model(family):
    """The family's InferenceModel with seeded random params of the trainer's shapes."""
    from archlab.deploy.inference_model import random_inference_model

    name, overrides, model_changes = FAMILIES[family]
    config = tiny_config(name, **overrides)
    for key, value in model_changes.items():
        config.model[key] = value
    example = np.zeros((1, *config.model.sample_shape), np.float32) if name == "gan" else None
    return random_inference_model(config, example)


@needs_export
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_round_trips_to_saved_model_and_onnx(family, tmp_path):
    import onnx

    from archlab.deploy.inference_model import jit_runner
    from archlab.deploy.onnx_export import BATCH_DIM, ONNX_OPSET, describe_io, export_onnx, onnxruntime_runner
    from archlab.deploy.parity import check_parity
    from archlab.deploy.saved_model import export_saved_model, saved_model_runner

    model = initialised_model(family)
    inputs = {b: model.input_batch(b, seed=0) for b in (1, 5)}  # two batch sizes, one artifact each
    reference = jit_runner(model)

    saved = saved_model_runner(model, export_saved_model(model, str(tmp_path / "saved_model")))
    onnx_path = str(tmp_path / "model.onnx")
    export_onnx(model, onnx_path)
    proto = onnx.load(onnx_path)
    onnx.checker.check_model(proto, full_check=True)
    io = describe_io(proto)
    assert io["opset"] == ONNX_OPSET
    assert list(io["inputs"]) == [model.input_name] and list(io["outputs"]) == list(model.output_names)
    assert io["inputs"][model.input_name] == [BATCH_DIM, *model.input_shape]
    assert all(shape and shape[0] == BATCH_DIM for shape in io["outputs"].values()), io

    for name, run in (("saved_model", saved), ("onnx", onnxruntime_runner(model, onnx_path))):
        record = check_parity(name, run, reference, inputs)
        assert record["passed"], record
        assert sorted(record["batches"]) == ["1", "5"]
        assert record["max_abs"] <= 1e-5 * max(1.0, max(r["ref_scale"] for r in record["batches"].values()))
        got = run(inputs[5])
        assert [y.shape[0] for y in got] == [5] * len(model.output_names)


def test_scanned_transformer_exports_as_the_same_function_unrolled():
    """The scan-over-layers params, unstacked into layer_<i>, give the scanned model's logits."""
    import jax

    from archlab.arch import get_model_spec
    from archlab.deploy.inference_model import inference_model, jit_runner

    config = tiny_config("transformer", model__scan_layers="true")
    module = get_model_spec("transformer").make_module(config.model)
    tokens = np.random.default_rng(0).integers(0, 256, (3, 32)).astype(np.int32)
    params = jax.tree.map(np.asarray, module.init(jax.random.PRNGKey(0), tokens)["params"])
    assert "layers" in params and "layer_0" not in params
    expected = np.asarray(module.apply({"params": params}, tokens))
    model = inference_model(config, params, {}, 0, tokens.shape, "int32")
    assert set(model.variables["params"]) >= {"layer_0", "layer_1"} and "layers" not in model.variables["params"]
    np.testing.assert_allclose(jit_runner(model)(tokens)[0], expected, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("export") / "cnn"
    flags = ["--config.train.steps=3", "--config.train.batch_size=8", "--config.train.warmup_steps=1", "--config.train.log_every=1",
             "--config.train.eval_every=3", "--config.train.eval_batches=1", "--config.checkpoint.every=3",
             "--config.model.channels=8,16", "--config.model.dense=32", "--config.data.image_size=8"]
    proc = run_cli("launch.train", "--model=cnn", f"--workdir={workdir}", "--no_progress", *flags)
    assert proc.returncode == 0, proc.stderr
    return workdir


@pytest.fixture(scope="module")
def exported_cnn(trained_cnn):
    if MISSING_EXPORT_PACKAGES:
        pytest.skip(f"export packages not installed ({', '.join(MISSING_EXPORT_PACKAGES)})")
    out = trained_cnn.parent / "cnn_export"
    os.makedirs(out)
    (out / "model.onnx").write_bytes(b"an old artifact")  # replaced, never half-written
    proc = run_cli("launch.export", f"--workdir={trained_cnn}", f"--out={out}", "--batch=1,4,6", "--formats=saved_model,onnx,tensorrt")
    return out, proc


@needs_export
def test_export_cli_writes_checked_artifacts_and_report(exported_cnn):
    from archlab.deploy.tensorrt_engine import tensorrt_missing

    out, proc = exported_cnn
    missing = tensorrt_missing()
    assert proc.returncode == (3 if missing else 0), proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "export_report.json").read_text())
    assert report["model"] == "cnn" and report["step"] == 3 and report["batches"]["parity"] == [1, 6]
    for name in ("saved_model", "onnx"):
        record = report["formats"][name]
        assert record["precision"] == "float32" and record["passed"] and record["max_abs"] <= 1e-5 and set(record["batches"]) == {"1", "6"}, record
    assert report["formats"]["onnx"]["inputs"] == {"images": ["B", 8, 8, 1]}
    assert report["formats"]["onnx"]["outputs"] == {"logits": ["B", 10]}
    assert (out / "saved_model" / "saved_model.pb").exists()
    assert (out / "model.onnx").read_bytes() != b"an old artifact"
    assert not [n for n in os.listdir(out) if ".partial-" in n or ".old-" in n]
    assert "| saved_model | float32 | 1, 6 |" in proc.stdout and "| onnx | float32 | 1, 6 |" in proc.stdout
    progress = [line for line in proc.stderr.splitlines() if re.match(r"\[\d/3\] ", line)]  # a start and an end line per format
    assert [line.split(":")[0] for line in progress] == ["[1/3] saved_model"] * 2 + ["[2/3] onnx"] * 2 + ["[3/3] tensorrt"] * 2, progress
    assert re.fullmatch(r"\[1/3\] saved_model: done in \d+\.\d s, parity ok", progress[1]), progress
    assert re.fullmatch(r"\[2/3\] onnx: done in \d+\.\d s, parity ok", progress[3]), progress
    if missing:
        skip_lines = [line for line in proc.stderr.splitlines() if line.startswith("tensorrt skipped")]
        assert len(skip_lines) == 1 and missing in skip_lines[0] and f"trtexec --onnx={out / 'model.onnx'}" in skip_lines[0]
        assert report["formats"]["tensorrt"]["status"] == "skipped"
        assert not (out / "model.engine").exists()

    import tensorflow as tf  # the SavedModel serves any batch size from its one signature

    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    for batch in (2, 7):
        logits = serve(images=tf.zeros((batch, 8, 8, 1)))["logits"]
        assert tuple(logits.shape) == (batch, 10)


def test_bad_input_is_one_line(tmp_path):
    from archlab.train.config import get_config

    assert_one_line_error(run_cli("launch.export", f"--workdir={tmp_path / 'nope'}"), "does not exist")
    assert_one_line_error(run_cli("launch.export", f"--workdir={tmp_path}", "--formats=onnx,pdf"), "unknown format 'pdf'", "saved_model")
    for bad in ("1,x,3", "0,8", "32,8,1", "1,2,3,4"):
        assert_one_line_error(run_cli("launch.export", f"--workdir={tmp_path}", f"--batch={bad}"), "bad --batch")
    no_checkpoint = tmp_path / "no_checkpoint"
    os.makedirs(no_checkpoint)
    (no_checkpoint / "config.json").write_text(json.dumps({"config": get_config("cnn").to_dict()}))
    assert_one_line_error(run_cli("launch.export", f"--workdir={no_checkpoint}", "--formats=onnx"), "no checkpoint")
    empty = tmp_path / "empty"
    os.makedirs(empty)
    assert_one_line_error(run_cli("launch.export", f"--workdir={empty}", "--formats=onnx"), "no config.json")
    assert not os.path.exists(no_checkpoint / "export")


# ------------------------------------------------------------------------------- library edge cases


def test_parity_failure_names_the_format_and_error():
    from archlab.deploy import ParityError
    from archlab.deploy.parity import check_parity, raise_on_failure

    x = {2: np.ones((2, 3), np.float32)}
    reference = lambda x: [x * 3.0]  # noqa: E731
    ok = check_parity("onnx", lambda x: [x * 3.0 + 1e-7], reference, x)
    off = check_parity("saved_model", lambda x: [x * 3.0 + 1e-3], reference, x)
    fp16 = check_parity("tensorrt_fp16", lambda x: [x * 3.0 + 1e-3], reference, x, precision="float16")
    assert ok["passed"] and fp16["passed"] and not off["passed"]
    with pytest.raises(ParityError, match=r"saved_model differs from JAX by max abs error 0.001"):
        raise_on_failure([ok, off, fp16])


def test_int8_parity_counts_the_examples_a_rounding_flip_moved():
    """int8 outside XLA: 1e-2 of the output scale passes, and the record says how many examples
    differ beyond the float32 bound (here 1 of 5, the one whose code flipped)."""
    from archlab.deploy.parity import check_parity

    x = {1: np.ones((1, 3), np.float32), 4: np.ones((4, 3), np.float32)}
    reference = lambda x: [x * 3.0]  # noqa: E731
    flipped = lambda x: [x * 3.0 + np.where(np.arange(len(x))[:, None] == 2, 0.02, 0.0)]  # noqa: E731
    record = check_parity("onnx", flipped, reference, x, precision="int8")
    assert record["passed"] and record["examples_beyond_float32_bound"] == "1/5" and "example_max_abs" not in record["batches"]["4"]
    assert not check_parity("onnx", flipped, reference, x)["passed"]  # a float model gets no such slack


@needs_export
def test_unconvertible_primitive_is_one_line():
    import jax
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    from archlab.deploy import ExportError
    from archlab.deploy.inference_model import InferenceModel
    from archlab.deploy.onnx_export import convert_to_onnx

    doubled = Primitive("archlab_unexportable")
    doubled.def_impl(lambda x: x * 2)
    doubled.def_abstract_eval(lambda x: x)
    mlir.register_lowering(doubled, mlir.lower_fun(lambda x: x * 2, multiple_results=False))
    model = InferenceModel("toy", 0, lambda v, x: (doubled.bind(x),), {}, "images", (4,), "float32", ("y",))
    assert float(jax.jit(lambda x: doubled.bind(x))(np.ones(1, np.float32))[0]) == 2.0
    with pytest.raises(ExportError) as info:
        convert_to_onnx(model)
    assert str(info.value) == "jax2onnx cannot convert primitive 'archlab_unexportable' in model 'toy'"


def test_atomic_path_never_leaves_a_partial_artifact(tmp_path):
    from archlab.deploy.artifacts import atomic_path, write_text

    write_text(str(tmp_path / "report.json"), "old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(tmp_path / "report.json"), directory=False) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("interrupted")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "old.pb").write_text("old")
    with atomic_path(str(tmp_path / "saved"), directory=True) as tmp:
        open(os.path.join(tmp, "new.pb"), "w").write("new")
    assert (tmp_path / "report.json").read_text() == "old"
    assert os.listdir(tmp_path / "saved") == ["new.pb"]
    assert sorted(os.listdir(tmp_path)) == ["report.json", "saved"]


# -------------------------------------------------------------------- TensorRT, mocked at its boundary


class FakeTensorRT(types.SimpleNamespace):
    """The tensorrt module's surface the builder uses, recording every call."""

    def __init__(self, version):
        calls = []
        fake = self

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                class Config:
                    def set_memory_pool_limit(self, pool, size):
                        calls.append(("workspace", pool, size))

                    def set_flag(self, flag):
                        if not hasattr(fake.BuilderFlag, "FP16"):
                            raise AttributeError("BuilderFlag has no FP16 in TensorRT 11")
                        calls.append(("set_flag", flag))

                    def add_optimization_profile(self, profile):
                        calls.append(("add_profile",))

                return Config()

            def create_optimization_profile(self):
                class Profile:
                    def set_shape(self, name, lo, opt, hi):
                        calls.append(("profile", name, lo, opt, hi))

                return Profile()

            def build_serialized_network(self, network, config):
                return b"engine"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse(self, data):
                calls.append(("parse", data))
                return True

        major = int(version.split(".")[0])
        super().__init__(
            __version__=version, calls=calls, Builder=Builder, OnnxParser=OnnxParser,
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=1),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
            BuilderFlag=types.SimpleNamespace(FP16="fp16") if major < 11 else types.SimpleNamespace(),
        )
        logger = lambda severity: "logger"  # noqa: E731  (trt.Logger(trt.Logger.WARNING))
        logger.WARNING = 2
        self.Logger = logger


@pytest.fixture
def toy_onnx(tmp_path):
    from archlab.deploy.inference_model import InferenceModel

    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx bytes")
    return str(path), InferenceModel("toy", 0, lambda v, x: (x,), {}, "images", (8, 8, 1), "float32", ("logits",))


@pytest.mark.parametrize("version", ["10.9.0", "11.2.0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_builder_branches_on_version(version, precision, toy_onnx, monkeypatch):
    import archlab.deploy.tensorrt_engine as te

    onnx_path, model = toy_onnx
    trt = FakeTensorRT(version)
    converted = []
    monkeypatch.setattr(te, "mixed_precision_onnx", lambda path: converted.append(path) or path)
    engine = te.build_engine(onnx_path, model, (1, 8, 32), precision, workspace_bytes=1 << 28, trt=trt)
    assert engine == b"engine"
    calls = trt.calls
    assert ("workspace", "workspace", 1 << 28) in calls
    assert ("profile", "images", (1, 8, 8, 1), (8, 8, 8, 1), (32, 8, 8, 1)) in calls and ("add_profile",) in calls
    if version.startswith("10"):
        assert ("create_network", 0) in calls and not converted
        assert (("set_flag", "fp16") in calls) == (precision == "fp16")
    else:
        assert ("create_network", 1 << 1) in calls and not any(c[0] == "set_flag" for c in calls)
        assert converted == ([onnx_path] if precision == "fp16" else [])


def test_tensorrt_11_fp16_without_modelopt_is_one_line(toy_onnx, monkeypatch):
    import archlab.deploy.tensorrt_engine as te
    from archlab.deploy import ExportError

    onnx_path, model = toy_onnx
    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(ExportError, match="TensorRT 11 builds fp16 only from a mixed-precision ONNX"):
        te.build_engine(onnx_path, model, (1, 8, 32), "fp16", trt=FakeTensorRT("11.0.0"))


def test_tensorrt_missing_names_what_is_absent(monkeypatch):
    import archlab.deploy.tensorrt_engine as te

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(te, "cuda_device_count", lambda: 0)
    assert te.tensorrt_missing() == "the tensorrt Python package and an NVIDIA GPU"
    monkeypatch.setattr(te, "cuda_device_count", lambda: 1)
    assert te.tensorrt_missing() == "the tensorrt Python package"


@pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="no NVIDIA GPU/TensorRT on this machine")
def test_tensorrt_engine_on_a_gpu(exported_cnn):
    pytest.importorskip("tensorrt", reason="no NVIDIA GPU/TensorRT: the tensorrt package is not installed")
    out, proc = exported_cnn
    report = json.loads((out / "export_report.json").read_text())
    assert proc.returncode == 0, proc.stderr
    assert report["formats"]["tensorrt_fp32"]["passed"] and report["formats"]["tensorrt_fp16"]["passed"]


def test_latency_records_follow_the_infer_layout():
    from archlab.bench.infer import markdown_table
    from archlab.deploy.latency import benchmark_backends

    inputs = {1: np.ones((1, 4), np.float32), 32: np.ones((32, 4), np.float32)}
    results = benchmark_backends({"jax_jit": lambda x: [x * 2], "onnxruntime": lambda x: [x + 1]}, inputs, warmup=1, repeats=3)
    assert list(results) == ["jax_jit@1", "onnxruntime@1", "jax_jit@32", "onnxruntime@32"]
    for key, record in results.items():
        assert set(record) >= {"batch", "mean_ms", "std_ms", "p50_ms", "p95_ms", "throughput"}
        assert record["batch"] == int(key.split("@")[1]) and record["p50_ms"] <= record["p95_ms"] and record["throughput"] > 0
    rows = markdown_table({"cnn": results})
    assert rows[0].startswith("| cnn | batch |") and len(rows) == 6 and rows[2].startswith("| jax_jit | 1 |")


def test_backends_take_turns_and_each_gets_its_repeats():
    from archlab.deploy.latency import benchmark_backends

    calls = []
    backends = {"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")}
    results = benchmark_backends(backends, {1: np.ones((1, 2), np.float32)}, warmup=2, repeats=7, rounds=3)
    assert results["a@1"]["repeats"] == results["b@1"]["repeats"] == 7
    timed = "".join(calls[4:])  # after 2 warm-up calls each
    assert timed == "aaa" "bbb" "aa" "bb" "aa" "bb"  # 7 = 3 + 2 + 2 calls per turn, backends alternating

"""Export of int8 (arch/quant.py) models: quantisation-aware-trained and post-training-quantised CNNs
reach ONNX with their rounding in the graph, and SavedModel exactly; a graph that lost it is refused."""

import numpy as np
import pytest

from conftest import needs_export, tiny_config

INT8_CNN = dict(model__channels="4,8", model__dense=16, data__image_size=8, train__batch_size=16, train__steps=6,
                train__log_every=3, train__eval_every=3, checkpoint__every=3)
INT8_QUANTISERS = 4  # conv_0, conv_1, dense, head: each rounds its input and its kernel


@pytest.fixture(scope="module")
def int8_runs(tmp_path_factory):
    """A quantisation-aware-trained tiny int8 CNN, and a float run with its post-training-quantised copy."""
    from archlab.train.loop import train_and_evaluate
    from archlab.train.ptq import quantize_run

    root = tmp_path_factory.mktemp("int8")
    quiet = dict(progress=False, echo=lambda *a: None)
    train_and_evaluate(tiny_config("cnn", model__quant="int8", **INT8_CNN), str(root / "qat"), **quiet)
    train_and_evaluate(tiny_config("cnn", **INT8_CNN), str(root / "f32"), **quiet)
    quantize_run(str(root / "f32"), calibration_batches=2, out=str(root / "ptq"), notify=lambda *a: None)
    return root


def _float_twin(model):
    """The same run's params as the float CNN (no ``quant`` collection): what a float-only export computes."""
    from archlab.deploy.inference_model import inference_model

    config = tiny_config("cnn", **INT8_CNN)
    variables = {k: v for k, v in model.variables.items() if k != "quant"}
    return inference_model(config, variables.pop("params"), variables, model.step, (1, *model.input_shape), model.input_dtype)


@needs_export
@pytest.mark.parametrize("run", ["qat", "ptq"])
def test_int8_cnn_round_trips_to_onnx_with_the_rounding_in_the_graph(run, int8_runs, tmp_path):
    """The ONNX file computes the int8 model (Round ops present, parity with JAX's int8 model at two
    batch sizes) and not the float model its params would also give."""
    import onnx

    from archlab.deploy.inference_model import jit_runner, load_inference_model
    from archlab.deploy.onnx_export import export_onnx, onnxruntime_runner
    from archlab.deploy.parity import check_parity

    model = load_inference_model(str(int8_runs / run), notify=lambda *a: None)
    assert "quant" in model.variables and model.step == 6
    path = str(tmp_path / "model.onnx")
    export_onnx(model, path)
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count("Round") >= 2 * INT8_QUANTISERS and ops.count("Clip") >= INT8_QUANTISERS, sorted(set(ops))

    inputs = {b: model.input_batch(b, seed=b) for b in (1, 64)}
    ort, reference = onnxruntime_runner(model, path), jit_runner(model)
    record = check_parity("onnx", ort, reference, inputs, "int8")
    assert record["passed"], record
    beyond, total = map(int, record["examples_beyond_float32_bound"].split("/"))
    assert total == 65 and beyond <= 3, record  # all but rare rounding-boundary flips match to float32 precision
    float_record = check_parity("onnx", ort, jit_runner(_float_twin(model)), inputs, "int8")
    float_beyond, _ = map(int, float_record["examples_beyond_float32_bound"].split("/"))
    assert float_beyond > total // 2, float_record  # the float model with the same params is far away


@needs_export
def test_int8_run_exports_through_the_pipeline_with_both_formats_in_tolerance(int8_runs):
    from archlab.deploy.pipeline import export_run

    report = export_run(str(int8_runs / "qat"), str(int8_runs / "qat_export"), formats=("saved_model", "onnx"), batches=(1, 4, 6),
                        notify=lambda *a: None)
    saved, onnx_record = report["formats"]["saved_model"], report["formats"]["onnx"]
    assert saved["precision"] == "float32" and saved["passed"] and saved["max_abs"] <= 1e-5, saved  # XLA both ways: exact
    assert onnx_record["precision"] == "int8" and onnx_record["passed"] and set(onnx_record["batches"]) == {"1", "6"}, onnx_record
    assert report["formats"]["onnx"]["inputs"] == {"images": ["B", 8, 8, 1]}


@needs_export
def test_int8_model_whose_graph_lost_its_rounding_is_refused():
    """An int8 model whose layers an exporter swapped for float ones must not ship as the float model."""
    from archlab.deploy import ExportError
    from archlab.deploy.inference_model import InferenceModel
    from archlab.deploy.onnx_export import convert_to_onnx

    model = InferenceModel("toy", 0, lambda v, x: (x * 2.0,), {"quant": {}}, "images", (4,), "float32", ("y",))
    with pytest.raises(ExportError, match="int8 .* no Round op"):
        convert_to_onnx(model)


@needs_export
def test_int8_model_exports_exactly_to_saved_model(tmp_path):
    """jax2tf traces arch.quant's rounding: the SavedModel matches the int8 model exactly."""
    import jax

    from archlab.deploy.inference_model import jit_runner, random_inference_model
    from archlab.deploy.saved_model import export_saved_model, saved_model_runner

    config = tiny_config("cnn", data__image_size=8, model__quant="int8")
    model = random_inference_model(config)
    model.variables["quant"] = jax.tree.map(lambda a: np.ones_like(a) * (3 if a.dtype.kind == "f" else 5), model.variables["quant"])
    x = model.input_batch(3)
    reference = jit_runner(model)(x)[0]
    float_model = random_inference_model(tiny_config("cnn", data__image_size=8))
    assert np.abs(jit_runner(float_model)(x)[0] - reference).max() > 1e-3  # the int8 rounding is really there
    saved = saved_model_runner(model, export_saved_model(model, str(tmp_path / "saved_model")))
    np.testing.assert_allclose(saved(x)[0], reference, atol=1e-5)

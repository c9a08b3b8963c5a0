"""ONNX through jax2onnx: symbolic batch ``B``, named input/outputs, opset ``ONNX_OPSET``.

jax2onnx traces the JAX function itself (params folded in as initializers), so it does not depend
on jax2tf, whose StableHLO-in-``XlaCallModule`` graphs tf2onnx cannot convert. After conversion the
shape annotations are recomputed by ONNX's own inference: jax2onnx 0.17 can leave stale NHWC shapes
on tensors whose layout transposes it removed (a ResNet's residual Add then fails onnxruntime's
shape check), while the computation itself is right; outputs whose batch axis came out as an
anonymous dynamic dim are named ``B`` like the input. The file is checked with ``onnx.checker``.

int8 models (``model.quant=int8``) export with their rounding in the graph (Div, Clip, Round on
the inputs and kernels of every Dense/Conv, integer-code MatMul/Conv, one rescale): arch.quant
writes those layers out so jax2onnx traces them instead of substituting its float Dense/Conv.
A graph of an int8 model without Round ops would be the float model, and is refused.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from archlab.deploy import ExportError
from archlab.deploy.artifacts import write_bytes
from archlab.deploy.inference_model import InferenceModel

ONNX_OPSET = 21  # onnxruntime >= 1.20 and TensorRT 10's parser both read it
BATCH_DIM = "B"
NORMALIZATION_MODE = "prefer_native"


def convert_to_onnx(model: InferenceModel):
    """The checked ``onnx.ModelProto`` of ``model``; an unconvertible primitive raises ExportError in one line."""
    import jax
    import onnx
    from jax2onnx import to_onnx

    batch = jax.export.symbolic_shape(BATCH_DIM)[0]
    spec = jax.ShapeDtypeStruct((batch, *model.input_shape), np.dtype(model.input_dtype))
    fn = lambda x: model.apply(model.variables, x)  # noqa: E731 (variables become initializers)
    try:
        proto = to_onnx(fn, [spec], model_name=model.model_name, opset=ONNX_OPSET, normalization_mode=NORMALIZATION_MODE,
                        input_names=[model.input_name], output_names=list(model.output_names))
    except NotImplementedError as e:
        found = re.search(r"primitive '([^']+)'", str(e))
        if found:
            raise ExportError(f"jax2onnx cannot convert primitive {found.group(1)!r} in model {model.model_name!r}") from None
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ExportError(f"jax2onnx cannot convert model {model.model_name!r}: {reason}") from None
    except Exception as e:  # jax2onnx raises many types for constructs it does not handle
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ExportError(f"jax2onnx failed on model {model.model_name!r}: {type(e).__name__}: {reason}") from None
    del proto.graph.value_info[:]  # stale layouts (see the module docstring); re-inferred below
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    for output in proto.graph.output:  # every output is batch-first: name its batch axis as the input's
        dims = output.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_param = BATCH_DIM
    onnx.checker.check_model(proto, full_check=True)
    if "quant" in model.variables and not any(node.op_type == "Round" for node in proto.graph.node):
        raise ExportError(f"model {model.model_name!r} is int8 (model.quant=int8) but its ONNX graph has no Round op, so it would be "
                          f"the float model; its Dense/Conv layers must be arch.quant's Int8Dense/Int8Conv")
    return proto


def export_onnx(model: InferenceModel, path: str):
    """Converts, checks and writes ``model.onnx`` (atomically); returns the ModelProto."""
    proto = convert_to_onnx(model)
    write_bytes(path, proto.SerializeToString())
    return proto


def describe_io(proto) -> dict:
    """Names and shapes (symbolic dims as strings) of the graph's inputs and outputs."""
    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: shape(v) for v in proto.graph.input},
        "outputs": {v.name: shape(v) for v in proto.graph.output},
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
    }


def onnxruntime_runner(model: InferenceModel, path: str, threads: int = 0) -> Callable[[np.ndarray], list[np.ndarray]]:
    """An onnxruntime CPU session with all graph optimisations: ``x -> [outputs as numpy]``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # no shape-merge warnings on the console
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def run(x):
        return session.run(list(model.output_names), {model.input_name: x})

    return run

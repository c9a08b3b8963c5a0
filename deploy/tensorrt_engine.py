"""TensorRT engines built from the exported ONNX file with the TensorRT Python API.

One explicit optimization profile covers the batch range (min, opt, max) with the other
dimensions fixed; the workspace is capped with ``set_memory_pool_limit``. Precision depends on the
installed major version:

- TensorRT 10 (weak typing): fp32 is the default build; fp16 sets ``BuilderFlag.FP16``.
- TensorRT 11 removed the precision flags: every network is strongly typed, so fp16 needs an ONNX
  graph that is itself mixed precision. It is made with ModelOpt AutoCast (``nvidia-modelopt``,
  inputs/outputs kept float32) and built as a strongly typed network.

The serialized engine is deserialized again and run once on the GPU (CUDA driver API through
ctypes, so no extra CUDA Python package is needed) to check parity. Where the ``tensorrt`` package
or an NVIDIA GPU is missing, :func:`tensorrt_missing` says which, and the caller skips this format.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Callable

import numpy as np

from archlab.deploy import ExportError
from archlab.deploy.artifacts import write_bytes

if TYPE_CHECKING:  # only for annotations: building and running engines needs no jax
    from archlab.deploy.inference_model import InferenceModel

WORKSPACE_BYTES = 1 << 30
ENGINE_FILES = {"fp32": "model.engine", "fp16": "model.fp16.engine"}


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


# ------------------------------------------------------------------------------- availability


def _libcuda():
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_device_count() -> int:
    """NVIDIA GPUs the CUDA driver sees (0 without a driver)."""
    lib = _libcuda()
    if lib is None or lib.cuInit(0) != 0:
        return 0
    count = ctypes.c_int(0)
    return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0


def tensorrt_missing() -> str | None:
    """None when an engine can be built here, else what is missing (the package, the GPU, or both)."""
    try:
        import tensorrt  # noqa: F401
        has_package = True
    except ImportError:
        has_package = False
    has_gpu = cuda_device_count() > 0
    missing = [what for what, ok in (("the tensorrt Python package", has_package), ("an NVIDIA GPU", has_gpu)) if not ok]
    return " and ".join(missing) or None


def trtexec_command(onnx_path: str, model: InferenceModel, batches: tuple[int, int, int]) -> str:
    shape = lambda b: "x".join(map(str, (b, *model.input_shape)))  # noqa: E731
    lo, opt, hi = batches
    return (f"trtexec --onnx={onnx_path} --minShapes={model.input_name}:{shape(lo)} --optShapes={model.input_name}:{shape(opt)} "
            f"--maxShapes={model.input_name}:{shape(hi)} --saveEngine=model.engine")


# ------------------------------------------------------------------------------------- build


def build_engine(onnx_path: str, model: InferenceModel, batches: tuple[int, int, int], precision: str = "fp32",
                 workspace_bytes: int = WORKSPACE_BYTES, trt=None) -> bytes:
    """The serialized engine for ``onnx_path``; ``trt`` is the tensorrt module (injectable for tests)."""
    if trt is None:
        import tensorrt as trt
    if precision not in ENGINE_FILES:
        raise ExportError(f"unknown TensorRT precision {precision!r}; valid: {', '.join(ENGINE_FILES)}")
    major = tensorrt_major(trt)
    if major < 10:
        raise ExportError(f"TensorRT {trt.__version__} is too old; this exporter targets TensorRT 10 and 11")
    if major >= 11 and precision == "fp16":
        onnx_path = mixed_precision_onnx(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if major >= 11:  # strongly typed always; the flag is accepted (and ignored) there
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    else:
        network = builder.create_network(0)  # explicit batch is the only mode in 10.x
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse {onnx_path}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    lo, opt, hi = batches
    shape = tuple(model.input_shape)
    profile.set_shape(model.input_name, (lo, *shape), (opt, *shape), (hi, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build a {precision} engine from {onnx_path} (see its log above)")
    return bytes(serialized)


def mixed_precision_onnx(onnx_path: str) -> str:
    """TensorRT 11's fp16 input: ``onnx_path`` converted to fp16 by ModelOpt AutoCast, float32 io kept."""
    try:
        import modelopt.onnx.autocast as autocast
    except ImportError:
        raise ExportError("TensorRT 11 builds fp16 only from a mixed-precision ONNX; install nvidia-modelopt "
                          "(ModelOpt AutoCast) or ask for fp32") from None
    converted = autocast.convert_to_mixed_precision(onnx_path=onnx_path, low_precision_type="fp16", keep_io_types=True)
    out = os.path.splitext(onnx_path)[0] + ".fp16.onnx"
    write_bytes(out, converted.SerializeToString())
    return out


def export_engine(onnx_path: str, engine_path: str, model: InferenceModel, batches: tuple[int, int, int],
                  precision: str = "fp32", workspace_bytes: int = WORKSPACE_BYTES) -> str:
    write_bytes(engine_path, build_engine(onnx_path, model, batches, precision, workspace_bytes))
    return engine_path


# --------------------------------------------------------------------------------------- run


class _Cuda:
    """The few CUDA driver calls running an engine needs (primary context, malloc, copies)."""

    def __init__(self):
        self.lib = _libcuda()
        if self.lib is None:
            raise ExportError("no CUDA driver (libcuda) to run the TensorRT engine")
        self._check(self.lib.cuInit(0), "cuInit")
        device, context = ctypes.c_int(), ctypes.c_void_p()
        self._check(self.lib.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        self._check(self.lib.cuCtxSetCurrent(context), "cuCtxSetCurrent")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise ExportError(f"CUDA driver call {what} failed with status {status}")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        self._check(self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cuMemFree_v2(ctypes.c_uint64(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._check(self.lib.cuMemcpyHtoD_v2(ctypes.c_uint64(ptr), array.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(array.nbytes)), "cuMemcpyHtoD")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._check(self.lib.cuMemcpyDtoH_v2(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr), ctypes.c_size_t(array.nbytes)), "cuMemcpyDtoH")

    def synchronize(self) -> None:
        self._check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")


def engine_runner(engine_path: str, model: InferenceModel) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Deserializes the engine: ``x -> [outputs as numpy]`` (device buffers allocated per call)."""
    import tensorrt as trt

    cuda = _Cuda()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    with open(engine_path, "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        raise ExportError(f"TensorRT could not deserialize {engine_path}")
    context = engine.create_execution_context()

    def run(x):
        x = np.ascontiguousarray(x, dtype=trt.nptype(engine.get_tensor_dtype(model.input_name)))
        context.set_input_shape(model.input_name, x.shape)
        buffers = {model.input_name: cuda.malloc(x.nbytes)}
        outputs = {}
        try:
            cuda.to_device(buffers[model.input_name], x)
            context.set_tensor_address(model.input_name, buffers[model.input_name])
            for name in model.output_names:
                out = np.empty(tuple(context.get_tensor_shape(name)), trt.nptype(engine.get_tensor_dtype(name)))
                buffers[name] = cuda.malloc(out.nbytes)
                context.set_tensor_address(name, buffers[name])
                outputs[name] = out
            if not context.execute_async_v3(0):
                raise ExportError(f"TensorRT failed to run {engine_path}")
            cuda.synchronize()
            for name, out in outputs.items():
                cuda.to_host(out, buffers[name])
        finally:
            for ptr in buffers.values():
                cuda.free(ptr)
        return [outputs[name].astype(np.float32) for name in model.output_names]

    return run

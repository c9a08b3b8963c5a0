"""The ``infer`` suite: inference latency of the CNN and the Transformer per backend, batch 1 and 32.

Backends: JAX jit, the TF SavedModel (jax2tf) and onnxruntime (jax2onnx, CPU EP, all graph
optimisations; with its default thread pool and with one intra-op thread); TensorRT is timed by ``launch.export --benchmark`` where an engine is built.
Params are seeded random values of the default configs' shapes (latency does not depend on
training), exported into a temporary directory. Each record: mean/std/p50/p95 ms and examples/s
after warm-up, keyed ``<backend>@<batch>``; per batch size the backends take turns (deploy.latency).
"""

from __future__ import annotations

import importlib.util
import tempfile

from archlab.bench import BenchmarkError, progress
from archlab.deploy.inference_model import jit_runner, random_inference_model
from archlab.deploy.latency import benchmark_backends, latency_table
from archlab.deploy.onnx_export import export_onnx, onnxruntime_runner
from archlab.deploy.saved_model import export_saved_model, saved_model_runner
from archlab.train.config import get_config

EXPORT_PACKAGES = ("tensorflow", "jax2onnx", "onnxruntime")  # imported by the deploy modules when they run

MODELS = ("cnn", "transformer")
BATCHES = (1, 32)
DEFAULT_REPEATS = 200


def run_suite(repeats: int | None = None) -> dict:
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchmarkError(f"the infer suite needs the export packages ({', '.join(missing)} missing): pip install -e '.[export]'")
    results = {}
    for name in progress.rows(MODELS, "infer"):
        model = random_inference_model(get_config(name))
        with tempfile.TemporaryDirectory(prefix=f"infer-{name}-") as tmp:
            backends = {
                "jax_jit": jit_runner(model),
                "tf_saved_model": saved_model_runner(model, export_saved_model(model, f"{tmp}/saved_model")),
                "onnxruntime": (export_onnx(model, f"{tmp}/model.onnx"), onnxruntime_runner(model, f"{tmp}/model.onnx"))[1],
                # one intra-op thread: no thread-pool hand-off per op, which a small model's batch-1 call is dominated by
                "onnxruntime_1thread": onnxruntime_runner(model, f"{tmp}/model.onnx", threads=1),
            }
            inputs = {b: model.input_batch(b) for b in BATCHES}
            results[name] = benchmark_backends(backends, inputs, repeats=repeats or DEFAULT_REPEATS)
    return results


def markdown_table(result: dict) -> list[str]:
    rows = []
    for name, records in result.items():
        rows += ([""] if rows else []) + latency_table(name, records)
    return rows

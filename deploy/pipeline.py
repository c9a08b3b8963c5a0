"""``export_run``: a training workdir's latest checkpoint -> checked artifacts + ``export_report.json``.

Order: restore the inference function, run JAX on the fixed seeded batches (the reference), then
per format export, reload and compare: SavedModel (jax2tf), ONNX (jax2onnx, onnxruntime), TensorRT
engines (from the ONNX file, fp32 and fp16). Every artifact is written atomically into ``out``;
the report is written last, also when a format fails its tolerance (then ParityError is raised
naming it). A TensorRT request without the package or a GPU is recorded as skipped, not failed.

A model whose own JAX outputs hold NaN/inf on the parity batches is not exported at all: the
report records the count (``jax``) and each requested format as not exported, and ParityError
says the model's own outputs are non-finite. Nothing is written into ``workdir`` unless ``out`` is
there (the default, ``workdir/export``); an ``out`` that cannot be created is an ExportError.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time

import numpy as np

from archlab.deploy import ExportError, ParityError
from archlab.deploy.artifacts import write_text
from archlab.deploy.inference_model import InferenceModel, jit_runner, load_inference_model
from archlab.deploy.latency import benchmark_backends
from archlab.deploy.onnx_export import describe_io, export_onnx, onnxruntime_runner
from archlab.deploy.parity import check_parity, nonfinite_counts, nonfinite_jax_message, parity_table, raise_on_failure
from archlab.deploy.saved_model import export_saved_model, saved_model_runner
from archlab.deploy.tensorrt_engine import ENGINE_FILES, engine_runner, export_engine, tensorrt_missing, trtexec_command
from archlab.train.summary_writer import write_run_summary

FORMATS = ("saved_model", "onnx", "tensorrt")
TRT_PRECISIONS = ("fp32", "fp16")
REPORT = "export_report.json"
SEED = 0


def parse_formats(spec: str) -> tuple[str, ...]:
    """``"saved_model,onnx"`` -> ("saved_model", "onnx"); ExportError naming the valid formats."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        what = f"unknown format {bad[0]!r}" if bad else "no format given"
        raise ExportError(f"{what}; valid formats: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def supported_formats() -> tuple[tuple[str, ...], dict[str, str]]:
    """(the formats this machine can export, {format: what it lacks} for the others): SavedModel
    needs tensorflow; ONNX jax2onnx, onnx and onnxruntime; TensorRT its package and an NVIDIA GPU."""
    import importlib.util

    needs = {"saved_model": ("tensorflow",), "onnx": ("jax2onnx", "onnx", "onnxruntime")}
    missing = {name: " and ".join(f"the {p} package" for p in packages if importlib.util.find_spec(p) is None)
               for name, packages in needs.items()}
    missing["tensorrt"] = tensorrt_missing() or ""
    if missing["onnx"] and not missing["tensorrt"]:
        missing["tensorrt"] = "the ONNX export it is built from"
    return tuple(name for name in FORMATS if not missing[name]), {name: why for name, why in missing.items() if why}


def parse_batches(spec: str) -> tuple[int, int, int]:
    """``"1,8,32"`` -> (min, opt, max); one or two numbers are accepted (``"8"``, ``"1,32"``)."""
    try:
        values = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ExportError(f"bad --batch {spec!r}: expected min,opt,max positive integers such as 1,8,32") from None
    if not 1 <= len(values) <= 3 or min(values) < 1:
        raise ExportError(f"bad --batch {spec!r}: expected min,opt,max positive integers such as 1,8,32")
    if len(values) == 1:
        values = values * 3
    elif len(values) == 2:
        values = [values[0], values[0], values[1]]
    if not values[0] <= values[1] <= values[2]:
        raise ExportError(f"bad --batch {spec!r}: need min <= opt <= max")
    return tuple(values)


def parse_precisions(spec: str) -> tuple[str, ...]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in TRT_PRECISIONS]
    if bad or not names:
        raise ExportError(f"unknown TensorRT precision {(bad or [''])[0]!r}; valid: {', '.join(TRT_PRECISIONS)}")
    return tuple(dict.fromkeys(names))


def export_run(workdir: str, out: str | None = None, formats=FORMATS, batches=(1, 8, 32), precisions=TRT_PRECISIONS,
               benchmark: bool = False, notify=print) -> dict:
    """Exports, checks and reports; returns the report (see the module docstring)."""
    started = time.time()
    out = os.path.abspath(out or os.path.join(workdir, "export"))
    model = load_inference_model(workdir, notify=notify)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create the output directory {out} ({e.strerror or e}); pass another --out") from None
    notify(f"{model.model_name} at step {model.step}: input {model.input_name} [batch, {', '.join(map(str, model.input_shape))}] "
           f"{model.input_dtype} -> {', '.join(model.output_names)}; writing to {out}")
    parity_batches = sorted({batches[0], batches[2]})
    inputs = {b: model.input_batch(b, SEED) for b in parity_batches}
    runners, records, artifacts = {"jax_jit": jit_runner(model)}, [], {}
    reference = _cached(runners["jax_jit"])
    report = {"model": model.model_name, "step": model.step, "workdir": os.path.abspath(workdir), "out": out, "seed": SEED,
              "batches": {"min": batches[0], "opt": batches[1], "max": batches[2], "parity": parity_batches},
              "input": {"name": model.input_name, "shape": ["batch", *model.input_shape], "dtype": model.input_dtype},
              "outputs": list(model.output_names), "formats": {}}
    report["jax"] = _reference_counts(reference, inputs)
    if report["jax"]["nonfinite"]:  # nothing to certify: don't spend the exports on it
        message = nonfinite_jax_message(f"{', '.join(formats)} not exported", report["jax"]["nonfinite"], report["jax"]["values"],
                                        model.step)
        report["formats"] = {name: {"status": "not exported", "message": message} for name in formats}
        _write_report(report, out, started)
        raise ParityError(message)

    stage = StageProgress([f for f in FORMATS if f in formats] + (["latency benchmark"] if benchmark else []), notify)
    if "saved_model" in formats:
        with stage("saved_model", records):
            path = export_saved_model(model, os.path.join(out, "saved_model"))
            runners["tf_saved_model"] = saved_model_runner(model, path)
            records.append(check_parity("saved_model", runners["tf_saved_model"], reference, inputs))
            artifacts["saved_model"] = {"path": path, "signature": "serving_default"}
    onnx_path = os.path.join(out, "model.onnx")
    if "onnx" in formats or "tensorrt" in formats:
        with stage("onnx" if "onnx" in formats else "onnx (for tensorrt)", records):
            proto = export_onnx(model, onnx_path)
            artifacts["onnx"] = {"path": onnx_path, **describe_io(proto)}
            if "onnx" in formats:
                runners["onnxruntime"] = onnxruntime_runner(model, onnx_path)
                records.append(check_parity("onnx", runners["onnxruntime"], reference, inputs, _precision(model)))
    if "tensorrt" in formats:
        with stage("tensorrt", records):
            records += _tensorrt(model, onnx_path, out, batches, precisions, reference, inputs, runners, artifacts, notify)

    for r in records:
        report["formats"][r["format"]] = {**artifacts.get(r["format"], {}), **r}
    for name, info in artifacts.items():
        report["formats"].setdefault(name, info)
    if benchmark:
        with stage("latency benchmark", []):
            bench_inputs = {b: model.input_batch(b, SEED) for b in parity_batches}
            report["infer"] = {model.model_name: benchmark_backends(runners, bench_inputs)}
    _write_report(report, out, started)
    report["table"] = parity_table(records)
    report["parity"] = records
    _write_summary(report, records, out)
    raise_on_failure(records)  # after the report is on disk
    return report


class StageProgress:
    """One line as each export stage starts and ends, numbered like a progress bar (``[2/3] onnx:
    done in 4.1 s, parity ok``), so a long export (TensorRT builds take minutes) shows where it is."""

    def __init__(self, names: list[str], notify):
        self.names, self.notify, self.done = names, notify, 0

    @contextlib.contextmanager
    def __call__(self, name: str, records: list[dict]):
        self.done += 1
        position = f"[{self.done}/{len(self.names)}] {name}"
        self.notify(f"{position}: exporting and checking ..." if name != "latency benchmark" else f"{position}: timing ...")
        started, count = time.perf_counter(), len(records)
        yield
        checked = records[count:]
        verdict = ""
        if checked:
            failed = [r["format"] for r in checked if not r["passed"]]
            verdict = f", parity {'FAILED: ' + ', '.join(failed) if failed else 'ok'}"
        self.notify(f"{position}: done in {time.perf_counter() - started:.1f} s{verdict}")


def _tensorrt(model: InferenceModel, onnx_path, out, batches, precisions, reference, inputs, runners, artifacts, notify) -> list[dict]:
    missing = tensorrt_missing()
    if missing:
        line = (f"tensorrt skipped: no NVIDIA GPU/TensorRT here (missing {missing}); {onnx_path} is ready for "
                f"`{trtexec_command(onnx_path, model, batches)}`")
        artifacts["tensorrt"] = {"status": "skipped", "missing": missing, "message": line}
        notify(line)
        return []
    import tensorrt as trt

    records = []
    for precision in precisions:
        engine_path = os.path.join(out, ENGINE_FILES[precision])
        export_engine(onnx_path, engine_path, model, batches, precision)
        runner = engine_runner(engine_path, model)
        name = f"tensorrt_{precision}"
        runners[name] = runner
        artifacts[name] = {"path": engine_path, "tensorrt": trt.__version__, "profile": list(batches)}
        records.append(check_parity(name, runner, reference, inputs, "float16" if precision == "fp16" else _precision(model)))
    return records


def _write_summary(report: dict, records: list[dict], out: str) -> None:
    """The export's inputs, parity errors and table into ``OUT/tensorboard`` (the run's TensorBoard writer)."""
    config = {k: report[k] for k in ("model", "step", "workdir", "out", "batches", "input", "outputs")}
    scalars = {f"{r['format']}_{m}": r[m] for r in records for m in ("max_abs", "max_rel") if isinstance(r.get(m), (int, float))}
    write_run_summary(out, config, step=report["step"], scalars=scalars, prefix="export", text={"parity": "\n".join(report["table"])})


def _write_report(report: dict, out: str, started: float) -> None:
    report["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    report["seconds"] = round(time.time() - started, 1)
    write_text(os.path.join(out, REPORT), json.dumps(report, indent=2, default=_json_default))


def _reference_counts(reference, inputs) -> dict:
    """NaN/inf values in JAX's outputs over every parity batch."""
    counts = [nonfinite_counts(reference(x)) for x in inputs.values()]
    return {"nonfinite": sum(c["nonfinite"] for c in counts), "values": sum(c["values"] for c in counts)}


def _precision(model: InferenceModel) -> str:
    """Parity precision outside XLA: "int8" for fake-quantised models (see deploy.parity), else "float32"."""
    return "int8" if "quant" in model.variables else "float32"


def _cached(run):
    """The JAX reference runs once per input batch."""
    cache = {}

    def cached(x):
        key = (x.shape, x.tobytes())
        if key not in cache:
            cache[key] = run(x)
        return cache[key]

    return cached


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)

"""Parity of exported artifacts with the JAX function they came from.

Each format runs the same fixed, seeded input batch at two batch sizes; per format the report
holds the max absolute error and the max relative error (max |got - ref| / max |ref|, per output,
so a near-zero reference element does not blow it up). A format passes when its max absolute error
is within ``tolerance * max(1, max |ref|)``: 1e-5 in float32 (1e-2 for fp16 engines) for outputs of
order one, scaled for larger ones such as LM logits.

int8 models (``model.quant=int8``) get 1e-2 in runtimes other than XLA: a value within float
rounding of a rounding boundary (code + 0.5) can round to the neighbouring int8 code in one runtime
and not the other (the inputs of later layers differ at 1e-7), and one flipped code moves a logit by
about one quantisation step. The record counts the examples beyond the float32 bound, so a reader
sees how rare such flips are (measured on a 200-step int8 CNN: 6 of 512 random inputs, up to 0.03,
argmax unchanged).

A NaN or inf anywhere fails parity, in JAX's outputs as in a format's: ``max`` over NaN would
otherwise read as zero error and certify a model that computes nothing. The errors are then taken
over the elements finite on both sides, and the record counts the non-finite values of each side
(``nonfinite_jax``, ``nonfinite_outputs``, out of ``values``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from archlab.deploy import ParityError

TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "int8": 1e-2}


def compare_outputs(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> dict:
    """``{"max_abs", "max_rel", "ref_scale", "example_max_abs", "nonfinite_jax", "nonfinite_outputs", "values"}``
    over all outputs (shapes must match); errors over the elements finite on both sides;
    ``example_max_abs`` is the max abs error of each example (leading axis), over all outputs."""
    max_abs = max_rel = scale = 0.0
    nonfinite_ref = nonfinite_out = values = 0
    per_example = None
    for ref, out in zip(reference, got, strict=True):
        ref = np.asarray(ref, np.float64)
        out = np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise ParityError(f"output shape {out.shape} differs from JAX's {ref.shape}")
        ref_ok, out_ok = np.isfinite(ref), np.isfinite(out)
        nonfinite_ref += int(ref.size - np.count_nonzero(ref_ok))
        nonfinite_out += int(out.size - np.count_nonzero(out_ok))
        values += int(ref.size)
        both = ref_ok & out_ok
        diff = np.abs(np.where(both, out, 0.0) - np.where(both, ref, 0.0))  # 0 where either side is NaN/inf
        err = float(np.max(diff)) if ref.size else 0.0
        ref_max = float(np.max(np.abs(np.where(ref_ok, ref, 0.0)))) if ref.size else 0.0
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / max(ref_max, 1e-30))
        scale = max(scale, ref_max)
        if ref.ndim and ref.size:
            rows = diff.reshape(ref.shape[0], -1).max(axis=1)
            per_example = rows if per_example is None else np.maximum(per_example, rows)
    return {"max_abs": max_abs, "max_rel": max_rel, "ref_scale": scale,
            "example_max_abs": [] if per_example is None else per_example.tolist(),
            "nonfinite_jax": nonfinite_ref, "nonfinite_outputs": nonfinite_out, "values": values}


def nonfinite_counts(outputs: Sequence[np.ndarray]) -> dict:
    """``{"nonfinite": NaN/inf values, "values": all values}`` of one run's outputs."""
    arrays = [np.asarray(y) for y in outputs]
    bad = sum(int(y.size - np.count_nonzero(np.isfinite(y))) for y in arrays)
    return {"nonfinite": bad, "values": sum(int(y.size) for y in arrays)}


def nonfinite_jax_message(what: str, nonfinite: int, values: int, step: int | None = None) -> str:
    """The one line for a model whose own JAX outputs hold NaN/inf, e.g. ``what="onnx not certified"``."""
    at = f" at step {step}" if step is not None else ""
    return (f"{what}: the model's own JAX outputs are non-finite ({nonfinite} of {values} values NaN/inf on the seeded "
            f"parity batches); the checkpoint{at} does not compute a usable model")


def check_parity(
    name: str,
    run: Callable[[np.ndarray], list[np.ndarray]],
    reference: Callable[[np.ndarray], list[np.ndarray]],
    inputs: dict[int, np.ndarray],
    precision: str = "float32",
) -> dict:
    """Runs ``run`` and ``reference`` on each batch of ``inputs`` ({batch size: input}); returns the record."""
    tolerance = TOLERANCE[precision]
    per_batch = {}
    for batch, x in inputs.items():
        per_batch[str(batch)] = compare_outputs(reference(x), run(x))
    max_abs = max(r["max_abs"] for r in per_batch.values())
    max_rel = max(r["max_rel"] for r in per_batch.values())
    scale = max(1.0, max(r["ref_scale"] for r in per_batch.values()))
    bound = tolerance * scale
    examples = [e for r in per_batch.values() for e in r.pop("example_max_abs")]
    beyond = sum(e > TOLERANCE["float32"] * scale for e in examples)
    nonfinite_jax = sum(r["nonfinite_jax"] for r in per_batch.values())
    nonfinite_outputs = sum(r["nonfinite_outputs"] for r in per_batch.values())
    return {"format": name, "precision": precision, "tolerance": tolerance, "bound": bound, "max_abs": max_abs,
            "max_rel": max_rel, "batches": per_batch, "examples_beyond_float32_bound": f"{beyond}/{len(examples)}",
            "nonfinite_jax": nonfinite_jax, "nonfinite_outputs": nonfinite_outputs,
            "values": sum(r["values"] for r in per_batch.values()),
            "passed": bool(max_abs <= bound and nonfinite_jax == 0 and nonfinite_outputs == 0)}


def raise_on_failure(records: Sequence[dict]) -> None:
    """ParityError naming the first failing format: non-finite outputs (JAX's or its own), or its error."""
    for r in records:
        if r.get("nonfinite_jax"):
            raise ParityError(nonfinite_jax_message(f"{r['format']} not certified", r["nonfinite_jax"], r["values"]))
        if r.get("nonfinite_outputs"):
            raise ParityError(f"{r['format']} outputs are non-finite ({r['nonfinite_outputs']} of {r['values']} values NaN/inf) "
                              "where JAX's are finite")
        if not r["passed"]:
            raise ParityError(
                f"{r['format']} differs from JAX by max abs error {r['max_abs']:.3g} (max rel {r['max_rel']:.3g}), "
                f"over its {r['precision']} tolerance {r['bound']:.3g}"
            )


def parity_table(records: Sequence[dict]) -> list[str]:
    """A markdown table, one row per format."""
    lines = ["| format | precision | batches | max abs error | max rel error | tolerance | result |", "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['format']} | {r['precision']} | {', '.join(r['batches'])} | {r['max_abs']:.2e} | {r['max_rel']:.2e} "
                     f"| {r['bound']:.1e} | {_result(r)} |")
    return lines


def _result(record: dict) -> str:
    if record.get("nonfinite_jax") or record.get("nonfinite_outputs"):
        return "FAIL (non-finite)"
    return "ok" if record["passed"] else "FAIL"

"""Parity of exported artifacts with the JAX function they came from.

Each format runs the same fixed, seeded input batch at two batch sizes; per format the report
holds the max absolute error and the max relative error (max |got - ref| / max |ref|, per output,
so a near-zero reference element does not blow it up). A format passes when its max absolute error
is within ``tolerance * max(1, max |ref|)``: 1e-5 in float32 (1e-2 for fp16 engines) for outputs of
order one, scaled for larger ones such as LM logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from deploy import ParityError

TOLERANCE = {"float32": 1e-5, "float16": 1e-2}


def compare_outputs(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> dict:
    """``{"max_abs", "max_rel", "ref_scale"}`` over all outputs (shapes must match)."""
    max_abs = max_rel = scale = 0.0
    for ref, out in zip(reference, got, strict=True):
        ref = np.asarray(ref, np.float64)
        out = np.asarray(out, np.float64)
        if ref.shape != out.shape:
            raise ParityError(f"output shape {out.shape} differs from JAX's {ref.shape}")
        err = float(np.max(np.abs(out - ref))) if ref.size else 0.0
        ref_max = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / max(ref_max, 1e-30))
        scale = max(scale, ref_max)
    return {"max_abs": max_abs, "max_rel": max_rel, "ref_scale": scale}


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
    bound = tolerance * max(1.0, max(r["ref_scale"] for r in per_batch.values()))
    return {"format": name, "precision": precision, "tolerance": tolerance, "bound": bound, "max_abs": max_abs,
            "max_rel": max_rel, "batches": per_batch, "passed": bool(max_abs <= bound)}


def raise_on_failure(records: Sequence[dict]) -> None:
    """ParityError naming the first format over its tolerance, with its error."""
    for r in records:
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
                     f"| {r['bound']:.1e} | {'ok' if r['passed'] else 'FAIL'} |")
    return lines

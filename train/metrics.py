"""Metric writers: ``metrics.jsonl`` (one JSON object per event), TensorBoard (through
:class:`train.summary_writer.SummaryWriter`), and the loss plot.

Only the primary process writes; the others get a writer that does nothing, so the loop never
branches on process index.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable

from archlab.train.atomic_write import write_jsonl_atomically
from archlab.train.figures import new_figure
from archlab.train.summary_writer import SummaryWriter


class MetricWriter:
    """Appends ``{"step": int, "split": "train"|"eval", ...}`` lines and TensorBoard scalars;
    ``summary`` is the run's TensorBoard writer (config, figures)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.summary = SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=enabled)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.summary.scalars(step, metrics, prefix=split)

    def truncate_after(self, step: int) -> None:
        """Drops records past ``step``: a resumed run re-logs them, so the file never repeats a step."""
        if not self.enabled or not os.path.exists(self.path):
            return
        write_jsonl_atomically(self.path, [r for r in read_metrics(self.path) if r["step"] <= step])

    def close(self) -> None:
        self.summary.close()


def _jsonable(value):
    value = float(value) if hasattr(value, "__float__") and not isinstance(value, (int, bool)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl (skipping a torn last line from a killed run)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# Task metrics that get their own panel next to the loss when a run logs them.
_EXTRA_PANELS = (
    ("accuracy", "accuracy"),
    ("psnr", "PSNR (dB)"),
    ("modes_covered", "modes covered"),
    ("high_quality_fraction", "samples within 3 std of a mode"),
)


def plot_loss_curves(records: Iterable[dict], out_path: str, *, title: str = "") -> str:
    """Train and held-out loss against step (plus accuracy, PSNR, mode coverage when logged) as one PNG."""
    records = list(records)
    mse_loss = any(isinstance(r.get("psnr"), (int, float)) for r in records)  # image reconstruction (NeRF): loss is an MSE
    panels = [("loss", "loss (MSE)" if mse_loss else "loss (nats)")] + [
        (metric, label) for metric, label in _EXTRA_PANELS if any(isinstance(r.get(metric), (int, float)) for r in records)
    ]
    fig = new_figure(figsize=(6.5 * len(panels), 4.5), dpi=110)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (metric, label) in zip(axes[0], panels):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[metric]) for r in records if r.get("split") == split and isinstance(r.get(metric), (int, float))]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, label="held-out" if split == "eval" else "train", markersize=4)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    fig.savefig(out_path)
    return out_path

"""One TensorBoard writer for every entry point (train, NAS, export): scalars, hparams, config text, images.

Built on tensorboardX (a base dependency, no TensorFlow): clu's ``metric_writers`` write TensorBoard
files through ``tf.summary``, and TensorFlow is only in the export extra. Only the primary process
writes; a disabled writer does nothing, so callers never branch on process index. Read the files
back with TensorBoard's own reader (``pip install -e '.[tensorboard]'``).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Iterable

_STEP_SUFFIX = re.compile(r"_step\d+$")


def flatten_config(tree: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"train.steps": 1000, ...}`` from a nested dict; tuples/lists and other leaves become strings,
    as the hparams plugin takes only bool, number and string values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, default=str)
    return flat


class SummaryWriter:
    """TensorBoard events under ``logdir`` (a run's ``WORKDIR/tensorboard``)."""

    def __init__(self, logdir: str, *, enabled: bool = True):
        self.logdir = logdir
        self.enabled = enabled
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter as _TBX

            self._tb = _TBX(logdir)

    def scalars(self, step: int, metrics: dict, *, prefix: str = "") -> None:
        """Every finite number in ``metrics`` as ``prefix/name``; other values are skipped."""
        if not self.enabled:
            return
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._tb.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)
        self._tb.flush()

    def config(self, config: dict, metric_tags: Iterable[str] = ("train/loss", "eval/loss")) -> None:
        """The resolved config as hparams (flattened, for the HParams tab, with ``metric_tags`` as its
        metric columns) and as a JSON text summary (the Text tab), both at step 0."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams

        experiment, session_start, _ = hparams(flatten_config(config), {tag: None for tag in metric_tags})
        events = self._tb._get_file_writer()
        events.add_summary(experiment)
        events.add_summary(session_start)
        # Markdown: a 4-space indent keeps the JSON as a code block.
        text = "\n".join("    " + line for line in json.dumps(config, indent=2, default=str).splitlines())
        self._tb.add_text("config", text, 0)
        self._tb.flush()

    def images(self, step: int, paths: Iterable[str], *, prefix: str = "plots") -> list[str]:
        """Each PNG file as an image ``prefix/<file stem>`` at ``step``, its bytes stored as they are
        (no decode/re-encode); returns the tags written. A ``_step000100`` suffix is dropped from the
        tag, so one figure drawn at every evaluation is one image with a step slider."""
        if not self.enabled:
            return []
        from PIL import Image
        from tensorboardX.proto.summary_pb2 import Summary

        tags = []
        for path in (p for p in paths if isinstance(p, str) and p.lower().endswith(".png") and os.path.isfile(p)):
            tag = f"{prefix}/{_STEP_SUFFIX.sub('', os.path.splitext(os.path.basename(path))[0])}"
            if tag in tags:
                continue
            with open(path, "rb") as f:
                encoded = f.read()
            with Image.open(path) as image:
                width, height = image.size
                channels = len(image.getbands())
            image_proto = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=encoded)
            self._tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image_proto)]), step)
            tags.append(tag)
        self._tb.flush()
        return tags

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
            self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_run_summary(workdir: str, config: dict, *, step: int, scalars: dict | None = None,
                      images: Iterable[str] = (), text: dict | None = None, prefix: str = "", enabled: bool = True) -> None:
    """One-shot summary of a run that is not a training loop (a NAS search, an export): config,
    scalars, figures and text (markdown, e.g. a table) into ``workdir/tensorboard``."""
    with SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=enabled) as writer:
        writer.config(config, metric_tags=[f"{prefix}/{k}" if prefix else k for k in (scalars or {})])
        writer.scalars(step, scalars or {}, prefix=prefix)
        writer.images(step, images)
        for tag, body in (text or {}).items():
            writer.text(tag, body, step)

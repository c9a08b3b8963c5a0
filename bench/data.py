"""The ``data`` suite: how fast each input pipeline delivers batches, next to how fast the train step eats them.

Default runs (``cnn``, ``resnet18``, ``transformer``, each configured as ``python -m launch.train
--model=X`` configures it): the training stream's rate (``next(dataset.train)`` with the default
``data.prefetch`` / ``data.workers``), the same stream read synchronously (``data.prefetch=0``,
``data.workers=0``: the pipeline's own cost, no read-ahead thread), and the compiled train step's
consumption rate on one device (``bench.parallel.TimedRun``), all measured in alternating blocks
in one process so a shared machine's load hits them alike. The pipeline must deliver >= ``REQUIRED_RATIO`` x what the
step consumes, or it is the bottleneck. Rates are examples/s for images, tokens/s (batch x
seq_len) for text.

Pipelines: every file format the loaders read, on small files generated into a temporary
directory (removed afterwards): CIFAR-10 binary batches, ``.npz``, TFRecord and ArrayRecord of
PNG-encoded images, an image folder of PNG/JPEG files, a nanoGPT ``.bin`` of uint16 tokens, a text
file. The decoding pipelines (records, folder) are also read with ``data.workers=2`` (grain's
``mp_prefetch``); if worker processes cannot run here, that entry holds the error instead.

A figure is a median over blocks of consecutive batches (per batch: seconds of the block / its
batches): one batch per block in-process; ``WORKER_BLOCK`` with worker processes, whose batches
arrive in bursts.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Callable

import numpy as np

from archlab.arch import get_model_spec
from archlab.bench import BenchmarkError, progress
from archlab.bench.parallel import TimedRun
from archlab.bench.timing import interleaved_blocks, median
from archlab.train.config import apply_overrides, get_config
from archlab.train.data import make_dataset
from archlab.train.data.records import image_example, write_array_record, write_tfrecord
from archlab.train.data.text import embedded_text

MODELS = ("cnn", "resnet18", "transformer")
REQUIRED_RATIO = 3.0
ONE_DEVICE = {"parallel.mesh": "data:1", "parallel.num_devices": "1"}  # what launch.train adds on one device

# Full runs: timed batches per pipeline block / train steps per step block, and how many blocks.
PIPELINE_BLOCK, STEP_BLOCK, BLOCKS = 40, 5, 4
WARMUP_BATCHES, WARMUP_STEPS = 5, 3
FILE_BATCHES, FILE_WARMUP = 60, 5
WORKER_BLOCK = 8  # batches per timed block when worker processes deliver them
WORKER_COUNTS = (0, 2)
TINY_WORKER_PIPELINES = ("tfrecord",)  # worker start-up costs seconds: the smoke run tries it once

# Seconds-sized shapes (smoke test; the figures mean nothing).
TINY_DEFAULT_OVERRIDES = {
    "cnn": {"train.batch_size": "8"},
    "resnet18": {"model.width": "4", "data.image_size": "8", "train.batch_size": "8"},
    "transformer": {"model.d_model": "32", "model.num_layers": "2", "model.num_heads": "2", "model.mlp_dim": "64",
                    "model.max_len": "32", "data.seq_len": "32", "train.batch_size": "8"},
}
TINY = dict(pipeline_block=4, step_block=1, blocks=2, warmup_batches=1, warmup_steps=1, file_batches=4, file_warmup=1)
FULL = dict(pipeline_block=PIPELINE_BLOCK, step_block=STEP_BLOCK, blocks=BLOCKS, warmup_batches=WARMUP_BATCHES,
            warmup_steps=WARMUP_STEPS, file_batches=FILE_BATCHES, file_warmup=FILE_WARMUP)


def default_config(model: str, overrides: dict[str, str] | None = None):
    """``model``'s default config on one device, exactly as ``python -m launch.train --model=MODEL`` builds it."""
    return apply_overrides(get_config(model), {**(overrides or {}), **ONE_DEVICE})


def task_of(config) -> str:
    return get_model_spec(config.model_name).task


def units_per_batch(config) -> tuple[int, str]:
    """(examples or tokens in one batch, "examples" | "tokens"): tokens = batch x seq_len for language models."""
    if task_of(config) == "lm":
        return config.train.batch_size * config.data.seq_len, "tokens"
    return config.train.batch_size, "examples"


def with_data(config, **fields):
    """A copy of ``config`` with ``data.FIELD=VALUE`` set (e.g. prefetch=0)."""
    return apply_overrides(config, {f"data.{k}": str(v) for k, v in fields.items()})


# ---------------------------------------------------------------- timing a stream


def time_batches(stream, count: int, block: int = 1) -> list[float]:
    """Seconds per batch of ``stream``: per block of ``block`` consecutive ``next()`` calls, the
    block's time / ``block``; ``count`` batches in all (rounded up to whole blocks)."""
    times = []
    for _ in range(max(1, math.ceil(count / block))):
        started = time.perf_counter()
        for _ in range(block):
            next(stream)
        times.append((time.perf_counter() - started) / block)
    return times


def drain(stream, batches: int) -> None:
    """Reads ``batches`` untimed: warm-up, or what a read-ahead thread buffered while the stream was
    not read (a step block), so the timed calls see the pipeline produce, not a full buffer emptied."""
    for _ in range(batches):
        next(stream)


# ---------------------------------------------------------------- default runs


def measure_default(model: str, *, overrides: dict[str, str] | None = None, pipeline_block: int, step_block: int,
                    blocks: int, warmup_batches: int, warmup_steps: int, seed: int = 0, **_) -> dict:
    """One default run's record: pipeline (default read-ahead), pipeline synchronous, train step; alternating blocks."""
    base = default_config(model, overrides)
    side = TimedRun(base, seed)  # builds its own dataset; its stream feeds the steps
    config = side.run.config  # as Run resolved it (model values read off the data)
    task = task_of(config)
    per_batch, unit = units_per_batch(config)
    d = config.data
    pipeline = make_dataset(task, base).train
    sync = make_dataset(task, with_data(base, prefetch=0, workers=0)).train
    pipe_times, sync_times = [], []
    try:
        drain(pipeline, warmup_batches)
        drain(sync, warmup_batches)
        side.steps(warmup_steps, record=False)
        load_before = os.getloadavg()[0]
        for _ in range(blocks):
            drain(pipeline, d.prefetch + 1)
            pipe_times += time_batches(pipeline, pipeline_block, WORKER_BLOCK if d.workers else 1)
            sync_times += time_batches(sync, pipeline_block)
            side.steps(step_block)
        load_after = os.getloadavg()[0]
    finally:
        pipeline.close()
        sync.close()
        side.batches.close()
    pipe_s, sync_s, step_s = median(pipe_times), median(sync_times), median(side.times)
    pipeline_rate, step_rate = per_batch / pipe_s, per_batch / step_s
    record = {
        "pipeline_per_s": pipeline_rate,
        "pipeline_sync_per_s": per_batch / sync_s,
        "step_per_s": step_rate,
        "unit": unit,
        "pipeline_over_step": pipeline_rate / step_rate,
        "ok": pipeline_rate / step_rate >= REQUIRED_RATIO,
        "pipeline_batch_s": pipe_s,
        "pipeline_sync_batch_s": sync_s,
        "step_s": step_s,
        "batch": config.train.batch_size,
        "prefetch": d.prefetch,
        "workers": d.workers,
        "data": side.run.data.source,
        "pipeline_batches": len(pipe_times) * (WORKER_BLOCK if d.workers else 1),
        "steps": len(side.times),
        "step_setup_s": side.setup_s,
        "load_average": [load_before, load_after],
    }
    if unit == "tokens":
        record["seq_len"] = d.seq_len
    else:
        record["image_size"] = list(np.asarray(side.run.data.example_input).shape[1:])
    return record


# ---------------------------------------------------------------- generated files


def _images(rng, n: int, size: int = 32, channels: int = 3) -> np.ndarray:
    """uint8 [n, size, size, channels]: smooth random colour fields plus noise (compress like photos, not like static)."""
    base = rng.integers(0, 256, (n, 4, 4, channels)).astype(np.float32)
    smooth = np.repeat(np.repeat(base, size // 4, axis=1), size // 4, axis=2)
    return np.clip(smooth + rng.normal(0, 24, smooth.shape), 0, 255).astype(np.uint8)


def write_cifar10(root: str, rng, n: int, files: int) -> str:
    """CIFAR-10 binary batches ``data_batch_1..files.bin`` + ``test_batch.bin``: records of 1 label byte + 3072 pixel bytes (CHW)."""
    def batch(count):
        labels = rng.integers(0, 10, (count, 1), dtype=np.uint8)
        pixels = _images(rng, count).transpose(0, 3, 1, 2).reshape(count, -1)
        return np.concatenate([labels, pixels], axis=1).tobytes()

    path = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(path)
    for i in range(files):
        with open(os.path.join(path, f"data_batch_{i + 1}.bin"), "wb") as f:
            f.write(batch(n // files))
    with open(os.path.join(path, "test_batch.bin"), "wb") as f:
        f.write(batch(max(1, n // 5)))
    return path


def write_npz(root: str, rng, n: int) -> str:
    path = os.path.join(root, "images.npz")
    np.savez(path, x=_images(rng, n), y=rng.integers(0, 10, n), x_test=_images(rng, max(1, n // 5)), y_test=rng.integers(0, 10, max(1, n // 5)))
    return path


def _examples(rng, n: int):
    for image, label in zip(_images(rng, n), rng.integers(0, 10, n)):
        yield image_example(image, int(label), encoding="png")


def write_records(root: str, rng, n: int, fmt: str) -> str:
    """``train.FMT`` + ``test.FMT`` of PNG-encoded 32x32 RGB ``tf.train.Example`` images."""
    write = write_tfrecord if fmt == "tfrecord" else write_array_record
    path = os.path.join(root, fmt)
    os.makedirs(path)
    write(os.path.join(path, f"train.{fmt}"), _examples(rng, n))
    write(os.path.join(path, f"test.{fmt}"), _examples(rng, max(1, n // 5)))
    return path


def write_image_folder(root: str, rng, per_class: int, classes: int) -> str:
    """``train/CLASS/*.png|jpg`` (alternating) + ``test/CLASS/...`` of 32x32 RGB images."""
    from PIL import Image

    path = os.path.join(root, "image_folder")
    for split, count in (("train", per_class), ("test", max(1, per_class // 5))):
        for c in range(classes):
            folder = os.path.join(path, split, f"class_{c}")
            os.makedirs(folder)
            for i, image in enumerate(_images(rng, count)):
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.{ext}"))
    return path


def write_tokens(root: str, rng, tokens: int) -> str:
    """A nanoGPT-style ``.bin`` of uint16 token ids (< 256: the byte tokenizer's vocabulary)."""
    path = os.path.join(root, "tokens.bin")
    rng.integers(0, 256, tokens, dtype=np.uint16).tofile(path)
    return path


def write_text(root: str, size: int) -> str:
    """A UTF-8 text file of ``size`` bytes (the embedded corpus, repeated)."""
    corpus = embedded_text().encode("utf-8")
    path = os.path.join(root, "corpus.txt")
    with open(path, "wb") as f:
        f.write((corpus * (size // len(corpus) + 1))[:size])
    return path


# name -> (model, data.format, what it is, writer(root, rng, tiny) -> path, worker counts to try)
PIPELINES: dict[str, tuple[str, str, str, Callable, tuple[int, ...]]] = {
    "cifar10": ("resnet18", "cifar10", "CIFAR-10 binary batches (in memory)",
                lambda root, rng, tiny: write_cifar10(root, rng, 200 if tiny else 5000, 1 if tiny else 5), (0,)),
    "npz": ("resnet18", "npz", ".npz of uint8 images (in memory)", lambda root, rng, tiny: write_npz(root, rng, 200 if tiny else 5000), (0,)),
    "tfrecord": ("resnet18", "tfrecord", "TFRecord of PNG Examples (decoded per batch)",
                 lambda root, rng, tiny: write_records(root, rng, 100 if tiny else 3000, "tfrecord"), WORKER_COUNTS),
    "array_record": ("resnet18", "array_record", "ArrayRecord of PNG Examples (decoded per batch)",
                     lambda root, rng, tiny: write_records(root, rng, 100 if tiny else 3000, "array_record"), WORKER_COUNTS),
    "image_folder": ("resnet18", "image_folder", "image folder of PNG/JPEG files (decoded per batch)",
                     lambda root, rng, tiny: write_image_folder(root, rng, 10 if tiny else 40, 2 if tiny else 10), WORKER_COUNTS),
    "tokens": ("transformer", "tokens", "uint16 .bin token file (pread per window)",
               lambda root, rng, tiny: write_tokens(root, rng, 100_000 if tiny else 12_000_000), (0,)),
    "text": ("transformer", "text", "text file, bytes (pread per window)",
             lambda root, rng, tiny: write_text(root, 100_000 if tiny else 4_000_000), (0,)),
}
TINY_PIPELINE_OVERRIDES = {"resnet18": {"train.batch_size": "8"}, "transformer": TINY_DEFAULT_OVERRIDES["transformer"]}


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def measure_pipeline(name: str, path: str, workers: int, *, tiny: bool, file_batches: int, file_warmup: int, **_) -> dict:
    """One pipeline's record: its rate on ``path`` with ``workers`` worker processes (default read-ahead)."""
    model, fmt, what, _, _ = PIPELINES[name]
    overrides = {**(TINY_PIPELINE_OVERRIDES.get(model, {}) if tiny else {}), "data.path": path, "data.format": fmt,
                 "data.workers": str(workers)}
    if model != "transformer":
        overrides["data.image_size"] = "32"
    config = default_config(model, overrides)
    per_batch, unit = units_per_batch(config)
    record = {"unit": unit, "workers": workers, "batch": config.train.batch_size, "model": model, "format": fmt,
              "what": what, "prefetch": config.data.prefetch}
    stream = None
    try:
        dataset = make_dataset(task_of(config), config)
        stream = dataset.train
        started = time.perf_counter()
        drain(stream, file_warmup)  # worker start-up lands here
        record["warmup_s"] = time.perf_counter() - started
        block = WORKER_BLOCK if workers else 1
        times = time_batches(stream, file_batches, block)
    except Exception as e:  # noqa: BLE001  worker processes may not run on every machine: report, don't crash
        if workers == 0 and not isinstance(e, ImportError):
            raise
        record["error"] = _one_line(e)
        return record
    finally:
        if stream is not None:
            stream.close()
    batch_s = median(times)
    record.update({"per_s": per_batch / batch_s, "batch_s": batch_s, "batches": len(times) * block,
                   "measured_as": f"median over blocks of {block} batch(es)", "description": dataset.description})
    if unit == "tokens":
        record["seq_len"] = config.data.seq_len
    return record


def _bytes_under(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, f)) for folder, _, files in os.walk(path) for f in files)


def measure_pipelines(*, tiny: bool, settings: dict, seed: int = 0) -> dict:
    """The ``"pipelines"`` section: each format on files generated into a temporary directory (deleted afterwards)."""
    results = {}
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="archlab-bench-data-") as root:
        for name, (model, fmt, what, write, worker_counts) in progress.rows(PIPELINES.items(), "data", lambda item: f"{item[0]} pipeline"):
            try:
                path = write(root, rng, tiny)
            except ImportError as e:  # an optional writer (array_record) not installed here
                results[name] = {"error": _one_line(e), "unit": "tokens" if model == "transformer" else "examples",
                                 "workers": 0, "batch": None, "model": model, "format": fmt, "what": what}
                continue
            size = _bytes_under(path)
            for workers in worker_counts if not tiny or name in TINY_WORKER_PIPELINES else (0,):
                key = name if workers == 0 else f"{name}_workers{workers}"
                results[key] = {**measure_pipeline(name, path, workers, tiny=tiny, **settings), "file_bytes": size}
    return results


# ---------------------------------------------------------------- the suite


def run_suite(repeats: int | None = None, *, tiny: bool = False, machine: dict | None = None) -> dict:
    """The ``"data"`` section: ``{"defaults": {model: ...}, "pipelines": {name: ...}, "all_ok": bool}``.

    ``repeats`` (None = the default) is the number of timed train steps per default run; the
    pipeline batches scale with it. ``tiny`` swaps in seconds-sized shapes and files (tests)."""
    settings = dict(TINY if tiny else FULL)
    if repeats is not None:
        if repeats < 1:
            raise BenchmarkError(f"repeats must be >= 1, got {repeats}")
        sizes = interleaved_blocks(repeats, settings["step_block"])
        settings["blocks"], settings["step_block"] = len(sizes), sizes[0]
    defaults = {model: measure_default(model, overrides=TINY_DEFAULT_OVERRIDES[model] if tiny else None, **settings)
                for model in progress.rows(MODELS, "data", lambda m: f"default {m} run")}
    pipelines = measure_pipelines(tiny=tiny, settings=settings)
    for record in pipelines.values():  # same model config and batch as the default run: its step is the consumer
        consumer = defaults.get(record.get("model"))
        if consumer and "per_s" in record:
            record["over_default_step"] = record["per_s"] / consumer["step_per_s"]
    return {
        "defaults": defaults,
        "pipelines": pipelines,
        "all_ok": all(r["ok"] for r in defaults.values()),
        "required_ratio": REQUIRED_RATIO,
        "tiny": tiny,
    }


def _rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}/s"


def markdown_table(result: dict) -> list[str]:
    """Markdown rows (docs/): the default runs (pipeline vs train step), then each pipeline on generated files, then the verdict."""
    need = result.get("required_ratio", REQUIRED_RATIO)
    rows = [
        "| data: default run (1 device) | pipeline (default read-ahead) | pipeline, synchronous (prefetch 0) | "
        "train step consumes | pipeline / step | |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in result["defaults"].items():
        shape = f"length {r['seq_len']}" if "seq_len" in r else "x".join(map(str, r.get("image_size", [])[:2]))
        verdict = "not the bottleneck" if r["ok"] else "**BOTTLENECK**"
        rows.append(f"| {model} (batch {r['batch']}, {shape}; prefetch {r['prefetch']}, workers {r['workers']}) | "
                    f"{_rate(r['pipeline_per_s'], r['unit'])} | {_rate(r['pipeline_sync_per_s'], r['unit'])} | "
                    f"{_rate(r['step_per_s'], r['unit'])} | **{r['pipeline_over_step']:,.1f}x** | {verdict} |")
    rows += ["", "| data: pipeline on generated files | model config | workers | batch | rate | vs that model's default train step |",
             "|---|---|---|---|---|---|"]
    for name, r in result["pipelines"].items():
        rate = _rate(r["per_s"], r["unit"]) if "per_s" in r else f"failed: {r['error']}"
        versus = f"{r['over_default_step']:,.1f}x" if "over_default_step" in r else "-"
        rows.append(f"| {name}: {r.get('what', '')} | {r.get('model', '')} | {r['workers']} | {r.get('batch', '')} | {rate} | {versus} |")
    slow = [m for m, r in result["defaults"].items() if not r["ok"]]
    rows += ["", f"Every default run's input pipeline delivers >= {need:g}x what its train step consumes: the pipeline is not the bottleneck."
             if not slow else f"NOT every default run's pipeline is >= {need:g}x its train step: {', '.join(slow)} "
             f"{'is' if len(slow) == 1 else 'are'} input-bound (the pipeline is the BOTTLENECK)."]
    return rows

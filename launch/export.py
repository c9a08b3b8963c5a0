"""python -m launch.export --workdir=RUN [--formats=saved_model,onnx,tensorrt] [--out=DIR] [--batch=1,8,32]

Without --formats every format this machine can export is written (TensorRT only with its package
and an NVIDIA GPU; the others' absence is one note line). Exit status: 0 every requested format
written and within tolerance; 2 bad input (no run or
checkpoint, unknown format, bad --batch, a model jax2onnx cannot convert, an output directory that
cannot be written); 1 a format over its parity tolerance or with NaN/inf outputs, or a model whose
own JAX outputs are NaN/inf (named on the one error line; the report is still written); 3 the other
formats passed but TensorRT was skipped because the tensorrt package or an NVIDIA GPU is missing.

The workdir is only read: nothing is written into it unless the output directory is there. The
default output is WORKDIR/export; when the workdir is not writable (a read-only mount, another
user's run), --out is required and its absence is refused before any work.
"""

from __future__ import annotations

import os
import sys

from archlab.launch.cli import OneLineParser, check_platform, fail, quiet_logs

TENSORRT_SKIPPED = 3


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m launch.export",
        description="Export a training run's latest checkpoint to TF SavedModel (jax2tf), ONNX (jax2onnx) and TensorRT, "
                    "each checked against JAX on a fixed seeded batch at two batch sizes (OUT/export_report.json).",
        epilog="exit status: 0 ok, 1 a format over its parity tolerance or NaN/inf outputs, 2 bad input, "
               "3 TensorRT asked for in --formats but skipped (no package/GPU), others ok",
    )
    parser.add_argument("--workdir", required=True, help="a run directory written by launch.train")
    parser.add_argument("--formats", default=None, help="comma-separated: saved_model, onnx, tensorrt (default: every format "
                        "this machine can export; TensorRT only with its package and an NVIDIA GPU)")
    parser.add_argument("--out", default=None, help="output directory (default WORKDIR/export; required when the workdir is "
                                                      "not writable); artifacts are replaced atomically")
    parser.add_argument("--batch", default="1,8,32", help="min,opt,max batch: TensorRT's profile; parity runs at min and max")
    parser.add_argument("--precision", default="fp32,fp16", help="TensorRT engine precisions: fp32, fp16")
    parser.add_argument("--benchmark", action="store_true", help="also time every backend at the min and max batch (report's infer section)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from archlab.deploy import ExportError, ParityError
    from archlab.deploy.pipeline import export_run, parse_batches, parse_formats, parse_precisions, supported_formats

    try:
        if args.formats is None:
            formats, lacking = supported_formats()
            note = f"exporting {', '.join(formats)}; not {', '.join(f'{k} (needs {v})' for k, v in lacking.items())}" if lacking else ""
            if not formats:
                raise ExportError(f"this machine can export no format ({'; '.join(f'{k}: needs {v}' for k, v in lacking.items())}); "
                                  "pip install -e '.[export]'")
        else:
            formats, note = parse_formats(args.formats), ""
        batches = parse_batches(args.batch)
        precisions = parse_precisions(args.precision)
    except ExportError as e:
        fail(str(e))
    if not os.path.isdir(args.workdir):
        fail(f"workdir {args.workdir!r} does not exist")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        fail(f"--out {args.out!r} is a file, not a directory")
    if args.out is None and not _writable(os.path.join(args.workdir, "export")):
        fail(f"workdir {args.workdir!r} is not writable, so the default output WORKDIR/export cannot be written; "
             "pass --out=DIR to export elsewhere")
    if args.out and not _writable(args.out):
        fail(f"--out {args.out!r} is not writable")

    check_platform()
    quiet_logs()
    import logging

    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # jax2onnx's serializer warns about untyped shape constants
    from archlab.train.checkpoint import CheckpointError

    notify = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        report = export_run(args.workdir, args.out, formats, batches, precisions, benchmark=args.benchmark, notify=notify)
    except ParityError as e:
        fail(str(e), code=1)
    except (ExportError, CheckpointError) as e:
        fail(str(e))
    print("\n".join(report["table"]))
    if "infer" in report:
        from archlab.deploy.latency import latency_table

        for name, results in report["infer"].items():
            print("\n".join(["", *latency_table(name, results)]))
    if note:  # after the work, so a failure above stays one line
        print(note, file=sys.stderr)
    print(f"wrote {os.path.join(report['out'], 'export_report.json')}", file=sys.stderr)
    trt = report["formats"].get("tensorrt", {})
    if trt.get("status") == "skipped":
        return TENSORRT_SKIPPED
    return 0


def _writable(path: str) -> bool:
    """Whether ``path`` (a directory, existing or to be created) can be written: checked on it or on
    its nearest existing parent. ``os.access`` answers for a read-only file system also as root."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


if __name__ == "__main__":
    sys.exit(main())

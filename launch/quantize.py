"""python -m launch.quantize --workdir=RUN [--calibration_batches=N] [--out=DIR]

Post-training int8 quantisation of a trained float run (train/ptq.py): calibrates activation
ranges on N training batches, prints float32 vs int8 held-out accuracy and model size, and writes
the int8 model to DIR (default RUN/ptq_int8) as a normal workdir.
"""

from __future__ import annotations

import json
import sys

from archlab.launch.cli import HelpFormatter, OneLineParser, fail, quiet_logs


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m launch.quantize", formatter_class=HelpFormatter,
                           description="Post-training int8 quantisation of a trained float run (train/ptq.py): calibrates activation\n"
                                       "ranges on N training batches, prints float32 vs int8 held-out accuracy and model size, and writes\n"
                                       "the int8 model to DIR (default RUN/ptq_int8) as a normal workdir.")
    parser.add_argument("--workdir", required=True, help="a run trained with python -m launch.train (float32, model.quant=none)")
    parser.add_argument("--calibration_batches", type=int, default=8, help="training batches that set the activation ranges (default 8)")
    parser.add_argument("--out", default=None, help="where the int8 model goes (default RUN/ptq_int8); must hold no checkpoints")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    quiet_logs()
    from archlab.train.checkpoint import CheckpointError
    from archlab.train.data import DataError
    from archlab.train.ptq import QuantizeError, quantize_run

    try:
        report = quantize_run(args.workdir, calibration_batches=args.calibration_batches, out=args.out)
    except (QuantizeError, CheckpointError, DataError) as e:
        fail(str(e))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    size = report["size"]
    print(f"{report['model']} step {report['step']}, {report['split']} split, calibrated on {report['calibration_batches']} batches "
          f"({report['calibration_examples']} examples)")
    print(f"  float32:  accuracy {100 * report['float32']['accuracy']:.2f} %, {size['float32_bytes']:,} bytes")
    print(f"  int8 PTQ: accuracy {100 * report['int8_ptq']['accuracy']:.2f} %, {size['int8_bytes']:,} bytes "
          f"({size['ratio']:.2f}x smaller: int8 kernels + float32 per-channel and activation scales, biases/BatchNorm float32)")
    print(f"  int8 model written to {report['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

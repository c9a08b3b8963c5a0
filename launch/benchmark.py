"""python -m launch.benchmark [--suite=parallel|nas|all] [--out=FILE.json] [--repeats=N]"""

from __future__ import annotations

import sys

from launch.cli import OneLineParser, fail, quiet_logs

BENCHMARK_DEVICES = 2  # fake CPU devices for the parallel suite (unless XLA_FLAGS already sets a count)


def main(argv: list[str] | None = None) -> int:
    from bench.xla_flags import ensure_host_devices

    ensure_host_devices(BENCHMARK_DEVICES)  # before anything imports jax
    from bench import BenchmarkError
    from bench.suites import select_suites, suite_names

    parser = OneLineParser(
        prog="python -m launch.benchmark",
        description="Measure the machine and the chosen suites; print a markdown table and write the JSON report.",
    )
    parser.add_argument("--suite", default="all", help=f"one of: {', '.join(suite_names())} (default all: every suite)")
    parser.add_argument("--out", default="benchmark.json", help="JSON report path (default benchmark.json)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per measurement (default: each suite's own)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.repeats is not None and args.repeats < 1:
        fail(f"--repeats must be >= 1, got {args.repeats}")
    try:
        suites = select_suites(args.suite)
        from bench.report import check_writable

        check_writable(args.out)
    except BenchmarkError as e:
        fail(str(e))

    quiet_logs()
    from bench.machine import machine_info
    from bench.report import markdown, write_json
    from bench.suites import run_suite
    from train.config import ConfigError
    from train.data import DataError
    from train.parallel import MeshError

    try:
        print("measuring peak matmul FLOP/s ...", file=sys.stderr, flush=True)
        results = {"machine": machine_info()}
        for name in suites:
            print(f"running suite {name} ...", file=sys.stderr, flush=True)
            results[name] = run_suite(name, args.repeats)
    except (BenchmarkError, ConfigError, DataError, MeshError) as e:
        fail(str(e))
    print(markdown(results))
    path = write_json(results, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

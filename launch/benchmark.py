"""python -m launch.benchmark [--suite=train|compile|infer|nas|parallel|data|all] [--out=FILE.json] [--repeats=N] [--tiny] [--profile=DIR]

Suites: train (step time, throughput and MFU of the transformer, CNN, ResNet-18), compile
(transformer compile time at 2/4/8/12 layers, scan over layers vs unrolled), infer (latency per
export backend), nas (vmap-ed population vs a Python loop), parallel (2-device data-parallel
step vs 1), data (each input pipeline's examples/s or tokens/s next to the train step's
consumption; the pipeline must be >= 3x the step). ``--tiny`` runs the suites that have a tiny
mode (train, compile, data) on seconds-sized shapes (smoke test; the figures mean nothing).
"""

from __future__ import annotations

import sys
import time

from archlab.launch.cli import OneLineParser, check_platform, fail, quiet_logs

BENCHMARK_DEVICES = 2  # fake CPU devices for the parallel suite (unless XLA_FLAGS already sets a count)


def main(argv: list[str] | None = None) -> int:
    from archlab.bench import BenchmarkError
    from archlab.bench.suites import select_suites, suite_names

    parser = OneLineParser(
        prog="python -m launch.benchmark",
        description="Measure the machine and the chosen suites; print a markdown table and write the JSON report. "
        "Suites: train (step time, throughput, MFU), compile (compile time vs depth, scan vs unrolled), "
        "infer (latency per export backend), nas (vmap-ed population vs loop), parallel (2-device step vs 1), "
        "data (input pipeline rate vs train-step consumption).",
    )
    parser.add_argument("--suite", default=None, help=f"one of: {', '.join(suite_names())} (default all: every suite; "
                        "with --tiny every suite that has a tiny mode)")
    parser.add_argument("--out", default="benchmark.json", help="JSON report path")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per measurement: train steps, or compiles per depth for compile (default: each suite's own)")
    parser.add_argument("--tiny", action="store_true",
                        help="seconds-sized shapes to check the benchmark runs (train, compile and data suites only; figures are meaningless)")
    parser.add_argument("--profile", default="", metavar="DIR",
                        help="also capture a jax.profiler trace of the suites into DIR (tensorboard --logdir DIR, Profile tab)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.repeats is not None and args.repeats < 1:
        fail(f"--repeats must be >= 1, got {args.repeats}")
    try:
        suites = select_suites(args.suite or "all")
        if args.tiny and args.suite is None:
            from archlab.bench.suites import supports_tiny

            suites = [name for name in suites if supports_tiny(name)]
    except BenchmarkError as e:
        fail(str(e))
    if "parallel" in suites:
        # Fake CPU devices for the parallel suite only, before anything imports jax: the other
        # suites run on one device as a user's training run does.
        from archlab.bench.xla_flags import ensure_host_devices

        ensure_host_devices(BENCHMARK_DEVICES)
    try:
        if args.tiny:
            from archlab.bench.suites import supports_tiny

            without = [name for name in suites if not supports_tiny(name)]
            if without:
                valid = [name for name in suite_names() if name != "all" and supports_tiny(name)]
                raise BenchmarkError(f"--tiny is not available for suite(s) {', '.join(without)}; it is for: {', '.join(valid)}")
        from archlab.bench.report import check_writable

        check_writable(args.out)
        if args.profile:
            from archlab.bench.suites import check_profile_dir

            check_profile_dir(args.profile)
    except BenchmarkError as e:
        fail(str(e))

    check_platform()
    quiet_logs()
    from archlab.bench.machine import machine_info
    from archlab.bench.report import markdown, write_json
    from archlab.bench.suites import profiled, run_suite
    from archlab.train.config import ConfigError
    from archlab.train.data import DataError
    from archlab.train.parallel import MeshError

    try:
        print("measuring peak matmul FLOP/s ...", file=sys.stderr, flush=True)
        results = {"machine": machine_info(peak_sizes=(128,), peak_repeats=2) if args.tiny else machine_info()}
        started = time.time()
        with profiled(args.profile):
            for index, name in enumerate(suites, 1):
                print(f"[{index}/{len(suites)}] running suite {name} ...", file=sys.stderr, flush=True)
                suite_started = time.time()
                results[name] = run_suite(name, args.repeats, tiny=args.tiny, machine=results["machine"])
                print(f"[{index}/{len(suites)}] suite {name} done in {time.time() - suite_started:.0f} s "
                      f"({time.time() - started:.0f} s in all)", file=sys.stderr, flush=True)
    except (BenchmarkError, ConfigError, DataError, MeshError) as e:
        fail(str(e))
    print(markdown(results))
    path = write_json(results, args.out)
    print(f"wrote {path}", file=sys.stderr)
    if args.profile:
        print(f"profile trace in {args.profile}: tensorboard --logdir {args.profile} (Profile tab)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

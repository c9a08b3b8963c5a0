"""python -m launch.train --model=NAME [--workdir=DIR] [--config.SECTION.FIELD=VALUE ...]"""

from __future__ import annotations

import argparse
import os
import sys

from launch.cli import OneLineParser, describe_config, fail, quiet_logs, split_config_overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags, overrides = split_config_overrides(argv)

    from arch import MODELS, UnknownModelError
    from train.config import ConfigError, apply_overrides, get_config

    probe = OneLineParser(add_help=False)
    probe.add_argument("--model")
    model_name = probe.parse_known_args(flags)[0].model or "transformer"
    try:
        help_config = get_config(model_name)
    except UnknownModelError:
        help_config = get_config("transformer")
    parser = OneLineParser(
        prog="python -m launch.train",
        description="Train a registry model on its embedded default data (resumes from WORKDIR's latest checkpoint).",
        epilog=f"config overrides for --model={help_config.model_name} (name=default):\n" + "\n".join(describe_config(help_config)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(sorted(MODELS))}")
    parser.add_argument("--workdir", default=None, help="run directory (default runs/<model>); the same one again resumes")
    parser.add_argument("--restart", action="store_true",
                        help="train from step 0 in a workdir that holds an earlier run's metrics but no checkpoints (its metrics.jsonl is kept aside, never overwritten)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar (log lines only)")
    parser.add_argument("--dry_run", action="store_true", help="check the model, config and data, print the resolved config, and exit without training")
    parser.add_argument("--summary", action="store_true", help="print parameters per module and XLA FLOPs per example, and exit without training")
    parser.add_argument("--coordinator", default="", help="with --config.parallel.distributed=explicit: process 0's HOST:PORT (or JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num_processes", type=int, default=None, help="with distributed=explicit: how many processes (or JAX_NUM_PROCESSES)")
    parser.add_argument("--process_id", type=int, default=None, help="with distributed=explicit: this process's index, 0-based (or JAX_PROCESS_ID)")
    args = parser.parse_args(flags)

    try:
        config = apply_overrides(get_config(args.model), overrides)
    except (UnknownModelError, ConfigError) as e:
        fail(str(e))
    if args.workdir is not None and not args.workdir.strip():
        fail("--workdir is empty; give a directory (default when the flag is left out: runs/<model>)")
    workdir = args.workdir or f"runs/{args.model}"

    quiet_logs()
    from train.checkpoint import CheckpointError, CheckpointWriteError, NonFiniteStateError
    from train.data import DataError
    from train.loop import NonFiniteLossError, WorkdirError, train_and_evaluate
    from train.memory_budget import OutOfMemoryError, is_out_of_memory
    from train.parallel import MeshError

    if args.summary:
        from train.summary import summarize_model

        try:
            print(summarize_model(config).table())
        except DataError as e:
            fail(str(e))
        return 0
    if args.dry_run:
        from arch import get_model_spec
        from train.data import make_dataset

        try:
            dataset = make_dataset(get_model_spec(args.model).task, config)
        except DataError as e:
            fail(str(e))
        print(config.to_json_best_effort(indent=2))
        print(f"dry run OK: --model={args.model}, data {dataset.source} ({dataset.description}), workdir {workdir}")
        return 0
    from train.parallel import initialize_distributed

    try:
        p = config.parallel
        started = initialize_distributed(p.distributed, coordinator=args.coordinator, num_processes=args.num_processes,
                                         process_id=args.process_id, heartbeat_timeout_s=p.heartbeat_timeout_s,
                                         initialization_timeout_s=p.initialization_timeout_s)
        if "process" in started and not started.startswith("single"):
            print(f"jax.distributed: {started}", flush=True)
        train_and_evaluate(config, workdir, progress=not args.no_progress, restart=args.restart)
    except CheckpointWriteError as e:
        # After a failed write orbax can leave non-daemon threads that block interpreter exit; all that
        # was saved is already on disk and the kernel drops the workdir lock, so leave at once.
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(2)
    except (ConfigError, DataError, WorkdirError, MeshError, CheckpointError, OutOfMemoryError) as e:
        fail(str(e))
    except (NonFiniteLossError, NonFiniteStateError) as e:
        fail(str(e), code=1)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        fail(f"out of memory ({reason}); lower train.batch_size or the model size, or shard over more devices "
             "(checkpoints written before this are intact)", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

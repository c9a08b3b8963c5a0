"""python -m launch.train --model=NAME | --config=configs/NAME.py[:arg] [--workdir=DIR] [--config.SECTION.FIELD=VALUE ...]

``--workdir=DIR`` alone resumes the run there with its saved config (DIR/config.json), overrides on top."""

from __future__ import annotations

import os
import sys

from archlab.launch.cli import (
    CONFIG_FILE_HELP,
    HelpFormatter,
    OneLineParser,
    base_config_from_flags,
    check_platform,
    default_workdir,
    describe_config,
    fail,
    quiet_logs,
    split_config_overrides,
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags, overrides = split_config_overrides(argv)

    from archlab.arch import MODELS, UnknownModelError
    from archlab.train.config import ConfigError, apply_overrides, get_config

    probe = OneLineParser(prog="python -m launch.train", add_help=False)
    probe.add_argument("--model")
    probe.add_argument("--config")
    probe.add_argument("--workdir")
    known = probe.parse_known_args(flags)[0]
    file_config = base_config_from_flags(known.model, known.config) if known.config is not None else None
    saved_config = _saved_config(known.workdir)
    if file_config is not None:
        help_config, help_source = file_config, f"--config={known.config}"
    elif known.model is None and saved_config is not None:
        help_config, help_source = saved_config, f"--workdir={known.workdir} (its config.json)"
    else:
        try:
            help_config = get_config(known.model or "transformer")
        except UnknownModelError:
            help_config = get_config("transformer")
        help_source = f"--model={help_config.model_name}"
    parser = OneLineParser(
        prog="python -m launch.train",
        description="Train a registry model on its embedded default data (resumes from WORKDIR's latest checkpoint).",
        epilog=f"config overrides for {help_source} (name=default):\n" + "\n".join(describe_config(help_config)),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", default=None, help=f"one of: {', '.join(sorted(MODELS))} (required unless --config names a file or --workdir holds a run's config.json)")
    parser.add_argument("--config", default=None, metavar="FILE[:ARG]", help=CONFIG_FILE_HELP)
    parser.add_argument("--workdir", default=None, help="run directory (default runs/<model>, or runs/<file>_<arg> with --config); the same one again resumes, "
                        "and --workdir alone resumes with its saved config.json (overrides on top; a changed model shape is refused)")
    parser.add_argument("--restart", action="store_true",
                        help="train from step 0 in a workdir that holds an earlier run's metrics but no checkpoints (its metrics.jsonl is kept aside, never overwritten)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar: a timestamped line every train.log_every steps (step, loss, steps/s, ETA) for cluster logs")
    parser.add_argument("--dry_run", action="store_true", help="check the model, config and data, print the resolved config, and exit without training")
    parser.add_argument("--summary", action="store_true", help="print parameters per module and XLA FLOPs per example, and exit without training")
    parser.add_argument("--coordinator", default="", help="with --config.parallel.distributed=explicit: process 0's HOST:PORT (or JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num_processes", type=int, default=None, help="with distributed=explicit: how many processes (or JAX_NUM_PROCESSES)")
    parser.add_argument("--process_id", type=int, default=None, help="with distributed=explicit: this process's index, 0-based (or JAX_PROCESS_ID)")
    args = parser.parse_args(flags)
    if args.model is None and args.config is None and saved_config is None:
        if args.workdir:
            fail(f"one of --model=NAME or --config=configs/NAME.py[:arg] is required: {args.workdir} holds no run's config.json to resume")
        parser.error("one of --model=NAME or --config=configs/NAME.py[:arg] is required (or --workdir=DIR of a run to resume)")

    try:
        if file_config is not None:
            base = file_config
        else:
            base = get_config(args.model) if args.model is not None else saved_config
        config = apply_overrides(base, overrides)
    except (UnknownModelError, ConfigError) as e:
        fail(str(e))
    if args.workdir is not None and not args.workdir.strip():
        fail("--workdir is empty; give a directory (default when the flag is left out: runs/<model>)")
    workdir = args.workdir or default_workdir(config.model_name, args.config)
    if saved_config is None and args.workdir is None:
        saved_config = _saved_config(workdir)
    if saved_config is not None:
        from archlab.train.resume import shape_changes

        changes = shape_changes(saved_config, config, os.path.join(workdir, "config.json"))
        if changes:
            fail(f"{'; '.join(changes)}: that changes the model shape of the run in {workdir}; resume with --workdir={workdir} "
                 "alone (its config.json), override only fields that keep the shape, or use another --workdir")
    check_platform()

    quiet_logs()
    if args.no_progress:  # cluster logs: a timestamped train line every train.log_every steps instead of the bar
        from archlab.train.train_log import log_to_console

        log_to_console()
    from archlab.train.checkpoint import CheckpointError, CheckpointWriteError, NonFiniteStateError
    from archlab.train.data import DataError
    from archlab.train.loop import NonFiniteLossError, WorkdirError, train_and_evaluate
    from archlab.train.memory_budget import OutOfMemoryError, is_out_of_memory
    from archlab.train.parallel import MeshError

    if args.summary:
        from archlab.train.model_summary import summarize_model

        try:
            print(summarize_model(config).table())
        except DataError as e:
            fail(str(e))
        return 0
    if args.dry_run:
        from archlab.arch import get_model_spec
        from archlab.train.compiled_run import make_run_mesh
        from archlab.train.data import make_dataset
        from archlab.train.parallel import mesh_shape

        try:
            dataset = make_dataset(get_model_spec(config.model_name).task, config)
            # an explicit multi-process mesh spans devices this process alone does not see
            mesh = make_run_mesh(config)[0] if config.parallel.distributed != "explicit" else None
        except (DataError, MeshError) as e:
            fail(str(e))
        print(config.to_json_best_effort(indent=2))
        source = f"--model={config.model_name}" + (f" (--config={args.config})" if args.config is not None else "")
        shape = ",".join(f"{axis}:{n}" for axis, n in mesh_shape(mesh).items()) if mesh is not None else "not checked (multi-process)"
        print(f"dry run OK: {source}, data {dataset.source} ({dataset.description}), mesh {shape}, workdir {workdir}")
        return 0
    from archlab.train.parallel import initialize_distributed

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
        from archlab.train.platforms import backend_error_line

        if backend_error_line(e):
            fail(backend_error_line(e))
        if not is_out_of_memory(e):
            raise
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        fail(f"out of memory ({reason}); lower train.batch_size or the model size, or shard over more devices "
             "(checkpoints written before this are intact)", code=1)
    return 0


def _saved_config(workdir: str | None):
    """The config of the run in ``workdir`` (its config.json), None without one; a bad file is one line."""
    if not workdir or not workdir.strip():
        return None
    from archlab.train.config import ConfigError
    from archlab.train.resume import read_run_config

    try:
        return read_run_config(workdir)
    except ConfigError as e:
        fail(str(e))


if __name__ == "__main__":
    sys.exit(main())

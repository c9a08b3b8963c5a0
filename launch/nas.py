"""python -m launch.nas --strategy=evolution|reinforce|random|grid|all [--workdir=DIR] [--config=configs/nas.py] [--config.search.space=cell|dense|hparams] [--config.search.budget=N ...]"""

from __future__ import annotations

import sys

from archlab.launch.cli import HelpFormatter, OneLineParser, describe_config, fail, quiet_logs, split_config_overrides

STRATEGY_CHOICES = ("evolution", "reinforce", "random", "grid", "all")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags, overrides = split_config_overrides(argv)
    from archlab.train.config import ConfigError, load_config_file
    from archlab.train.errors import SearchError
    from archlab.train.nas.config import apply_nas_overrides, nas_config
    from archlab.train.nas.report import comparison_table
    from archlab.train.nas.runner import COMPARED, run_strategies

    parser = OneLineParser(
        prog="python -m launch.nas",
        description="Search NAS-Bench-201 cells (search.space=cell), masked MLPs (dense) or the training hyperparameters of "
                    "one cell (hparams): each strategy scores whole batches of members (a vmap-ed population trained in one jit, "
                    "synflow, or a table lookup). The same workdir again resumes.",
        epilog="config overrides (name=default):\n" + "\n".join(describe_config(nas_config())),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--strategy", required=True, choices=STRATEGY_CHOICES,
                        help=f"search strategy; all = {', '.join(COMPARED)} over search.seeds seeds, compared")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a NAS config file, configs/nas.py or a copy of it: its get_config() replaces the defaults below; "
                             "--config.SECTION.FIELD=VALUE overrides apply on top")
    parser.add_argument("--workdir", default=None, help="run directory (default runs/nas_<strategy>); the same one again resumes")
    parser.add_argument("--coordinator", default="", help="with --config.parallel.distributed=explicit: process 0's HOST:PORT (or JAX_COORDINATOR_ADDRESS)")
    parser.add_argument("--num_processes", type=int, default=None, help="with distributed=explicit: how many processes (or JAX_NUM_PROCESSES)")
    parser.add_argument("--process_id", type=int, default=None, help="with distributed=explicit: this process's index, 0-based (or JAX_PROCESS_ID)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars (cluster logs): one line per strategy and seed")
    args = parser.parse_args(flags)
    try:
        config = apply_nas_overrides(nas_config() if args.config is None else load_config_file(args.config), overrides)
    except (ConfigError, SearchError) as e:
        fail(str(e))
    workdir = args.workdir or f"runs/nas_{args.strategy}"
    strategies = list(COMPARED) if args.strategy == "all" else [args.strategy]

    quiet_logs()
    from archlab.train.errors import WorkdirError
    from archlab.train.parallel import MeshError, initialize_distributed
    from archlab.train.workdir_setup import check_workdir

    try:
        p = config.parallel
        started = initialize_distributed(p.distributed, coordinator=args.coordinator, num_processes=args.num_processes,
                                         process_id=args.process_id, heartbeat_timeout_s=p.heartbeat_timeout_s,
                                         initialization_timeout_s=p.initialization_timeout_s)
        if not started.startswith("single"):
            print(f"jax.distributed: {started}", flush=True)
        workdir = check_workdir(workdir)
        summary = run_strategies(config, strategies, workdir, progress=not args.no_progress)
    except (SearchError, WorkdirError, MeshError) as e:
        fail(str(e))
    import jax

    if summary["complete"] and jax.process_index() == 0:
        best = summary["best"]
        print(f"best: {best.get('member', best.get('genotype'))} ({best['unit']} {best['score']:.2f}, {best['strategy']} seed {best['seed']})")
        print("\n".join(comparison_table(summary["comparison"], None if config.scorer.kind != "table" else _optimum(workdir))))
        if config.search.space != "dense":
            print(f"train it fully: {_train_command(best)}")
    return 0


def _train_command(best: dict) -> str:
    command = f"python -m launch.train --model=nas_cell --config.model.genotype='{best['genotype']}'"
    if "values" in best:  # search.space=hparams
        v = best["values"]
        command += (f" --config.model.channels={v['width']} --config.train.batch_size={v['batch_size']}"
                    f" --config.train.learning_rate={v['learning_rate']} --config.train.weight_decay={v['weight_decay']}")
    return command


def _optimum(workdir: str):
    import json
    import os

    with open(os.path.join(workdir, "comparison.json")) as f:
        return json.load(f)["optimum"]


if __name__ == "__main__":
    sys.exit(main())

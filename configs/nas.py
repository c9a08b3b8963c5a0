"""The config of ``python -m launch.nas`` (``--config=configs/nas.py``, the default): every NAS default.

Not a model family: a search config has no ``model_name``. Its sections are ``search`` (the strategies:
``train.nas.search_config.SearchConfig`` is its typed view), ``scorer`` (how cells are scored),
``dense`` and ``hparams`` (the two other spaces) and ``parallel`` (multi-host, as launch.train). No args.
"""

from __future__ import annotations

import ml_collections

from archlab.configs.base import choose

ARGS: tuple[str, ...] = ()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    choose(arg, ARGS)
    c = ml_collections.ConfigDict()
    c.seed = 0  # runs use seeds seed .. seed + search.seeds - 1

    c.search = ml_collections.ConfigDict()
    c.search.space = "cell"  # cell | dense | hparams
    c.search.budget = 64  # architectures evaluated per run
    c.search.population = 16  # regularized evolution's population
    c.search.seeds = 1  # runs per strategy; --strategy=all comparisons want 3 or more
    c.search.steps_per_member = 50  # training steps when the scorer trains members
    c.search.sample_size = 5  # evolution's tournament size
    c.search.children_per_cycle = 8  # = scorer.chunk: each evolution cycle is one population program, no padding
    c.search.batch_size = 16  # random and grid search: codes scored per call
    c.search.controller_batch = 10  # REINFORCE: architectures sampled per update
    c.search.controller_hidden = 32  # REINFORCE: LSTM width
    c.search.controller_lr = 0.01  # measured: 0.02+ sometimes collapses onto a wrong op within 40 updates
    c.search.entropy_weight = 1e-4
    c.search.baseline_decay = 0.95

    c.scorer = ml_collections.ConfigDict()
    c.scorer.kind = "train"  # train | synflow | table
    c.scorer.table = ""  # scorer.kind=table: a CSV/JSON of NAS-Bench-201 arch strings -> accuracy
    c.scorer.image_size = 16  # digits resized (train / synflow)
    c.scorer.channels = 16
    c.scorer.batch_size = 32
    c.scorer.learning_rate = 1e-2
    c.scorer.chunk = 8  # members trained together (lax.map over chunks in one program); calls are padded to a multiple
    c.scorer.devices = 1  # devices each chunk's members are split over (a "population" mesh axis; must divide scorer.chunk)

    c.parallel = ml_collections.ConfigDict()  # multi-host: as launch.train (train.parallel.initialize_distributed)
    c.parallel.distributed = "auto"  # auto | off | explicit (--coordinator, --num_processes, --process_id)
    c.parallel.heartbeat_timeout_s = 30
    c.parallel.initialization_timeout_s = 120  # multi-host start-up: give up this long after a peer fails to join

    # search.space=dense: MLPs on flattened digits (scorer.batch_size, learning_rate); the grid of
    # arch.search_space.DenseSpace()
    c.dense = ml_collections.ConfigDict()
    c.dense.max_depth = 4
    c.dense.widths = (16, 32, 64, 128)
    c.dense.activations = ("relu", "gelu", "tanh", "swish")
    c.dense.image_size = 8  # digits' own resolution: 64 inputs

    # search.space=hparams: a grid over one fixed cell's training; each member's batch size, width, learning rate and
    # weight decay replace scorer.batch_size, scorer.channels, scorer.learning_rate (and weight decay 0); the grid of
    # arch.search_space.HyperparameterSpace()
    c.hparams = ml_collections.ConfigDict()
    c.hparams.genotype = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    c.hparams.learning_rates = (1e-3, 3e-3, 1e-2, 3e-2)
    c.hparams.weight_decays = (0.0, 1e-1)  # decoupled (AdamW): the step subtracts lr * wd * param
    c.hparams.batch_sizes = (32, 64)
    c.hparams.widths = (8, 16)
    return c

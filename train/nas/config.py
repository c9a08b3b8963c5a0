"""The config of a NAS run: ``configs/nas.py``'s defaults, ``--config.X.Y=V`` overrides, and the checks.

Overrides go through the trainer's parser (``train.config.override_fields``), so a bad key or value
reads as it does for ``launch.train``; every problem is a one-line SearchError. The ``search`` section's
typed view is ``train.nas.search_config``; :func:`make_space` builds the space ``search.space`` names.
"""

from __future__ import annotations

import ml_collections

from archlab.arch.search_space import CellSpace, DenseSpace, GenotypeError, HyperparameterSpace, genotype_from_string
from archlab.configs.nas import get_config
from archlab.train.config import ConfigError, check_like, override_fields
from archlab.train.errors import SearchError
from archlab.train.nas.dense_population import check_activations
from archlab.train.nas.search_config import search_config

SCORERS = ("train", "synflow", "table")
SPACES = ("cell", "dense", "hparams")


def nas_config() -> ml_collections.ConfigDict:
    """The complete default config of ``python -m launch.nas``: ``configs/nas.py``'s ``get_config()``."""
    return get_config()


def apply_nas_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` with ``{"search.budget": "8", ...}`` applied (strings typed by
    each field's current value, as ``--config.search.budget=8`` is)."""
    try:
        check_like(config, get_config(), "a NAS config file starts from configs/nas.py's get_config() and keeps every field")
        config = override_fields(config, overrides)
    except ConfigError as e:
        raise SearchError(str(e)) from None
    validate_nas_config(config)
    return config


def validate_nas_config(config: ml_collections.ConfigDict) -> None:
    """Refuses values that parse but make no sense, naming the field and what is allowed."""
    try:
        search_config(config)
    except ValueError as e:
        raise SearchError(str(e)) from None
    for name in ("heartbeat_timeout_s", "initialization_timeout_s"):
        if config.parallel[name] < 1:
            raise SearchError(f"parallel.{name} must be >= 1 (got {config.parallel[name]})")
    s = config.scorer
    if s.kind not in SCORERS:
        raise SearchError(f"scorer.kind must be one of {', '.join(SCORERS)} (got {s.kind!r})")
    if s.kind == "table" and not s.table:
        raise SearchError("scorer.kind=table needs --config.scorer.table=PATH (a CSV/JSON of NAS-Bench-201 arch strings -> accuracy)")
    for name in ("image_size", "channels", "batch_size", "chunk", "devices"):
        if s[name] < 1:
            raise SearchError(f"scorer.{name} must be >= 1 (got {s[name]})")
    if s.chunk % s.devices:
        raise SearchError(f"scorer.devices={s.devices} must divide scorer.chunk={s.chunk} (each chunk's members are split evenly)")
    if s.devices > 1:
        if config.search.space == "dense" or s.kind != "train":
            raise SearchError(f"scorer.devices > 1 shards trained cell populations (search.space=cell|hparams, scorer.kind=train); "
                              f"got search.space={config.search.space}, scorer.kind={s.kind}")
    if s.image_size % 4:
        raise SearchError(f"scorer.image_size must be divisible by 4 (the head's 4x4 grid); got {s.image_size}")
    if s.learning_rate <= 0:
        raise SearchError(f"scorer.learning_rate must be > 0 (got {s.learning_rate})")
    space = config.search.space
    if space not in SPACES:
        raise SearchError(f"search.space must be one of {', '.join(SPACES)} (got {space!r})")
    if space != "cell" and s.kind != "train":
        raise SearchError(f"search.space={space} is scored by training (scorer.kind=train); scorer.kind={s.kind} scores cells only")
    make_space(config)  # the chosen space's own checks


def make_space(config: ml_collections.ConfigDict):
    """The ``arch.search_space`` object ``search.space`` names, built from its config section; SearchError on bad values."""
    space = config.search.space
    if space == "cell":
        return CellSpace()
    if space == "dense":
        d = config.dense
        if d.max_depth < 1:
            raise SearchError(f"dense.max_depth must be >= 1 (got {d.max_depth})")
        if not d.widths or min(d.widths) < 1:
            raise SearchError(f"dense.widths must list at least one width, all >= 1 (got {tuple(d.widths)})")
        try:
            check_activations(tuple(d.activations))
        except ValueError as e:
            raise SearchError(f"dense.activations: {e}") from None
        if d.image_size < 1:
            raise SearchError(f"dense.image_size must be >= 1 (got {d.image_size})")
        return DenseSpace(max_depth=d.max_depth, widths=tuple(d.widths), activations=tuple(d.activations))
    h = config.hparams
    try:
        genotype_from_string(h.genotype)
    except GenotypeError as e:
        raise SearchError(f"bad hparams.genotype: {e}") from None
    try:
        return HyperparameterSpace(learning_rates=tuple(h.learning_rates), weight_decays=tuple(h.weight_decays),
                                   batch_sizes=tuple(h.batch_sizes), widths=tuple(h.widths))
    except ValueError as e:
        raise SearchError(f"hparams.{e}") from None

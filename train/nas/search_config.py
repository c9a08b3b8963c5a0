"""The ``search`` config section as a typed, validated value, from a dict or an ml_collections config.

Tools rely on ``search.budget`` (architectures evaluated), ``search.population``, ``search.seeds`` and
``search.steps_per_member``; the rest tune the strategies. A field not given takes its value from
``configs/nas.py``, the one place NAS defaults live; a string is parsed by the trainer's
``convert_override`` (as a ``--config.search.X=V`` flag is). Keys this module does not know are left to
their owners (the scorer, the CLI), so they are ignored here, not rejected.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from archlab.configs.nas import get_config as nas_defaults
from archlab.train.config import convert_override


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    budget: int  # architectures evaluated per run
    population: int  # regularized evolution's population
    seeds: int  # runs per strategy in comparisons
    steps_per_member: int  # training steps when the scorer trains members
    sample_size: int  # evolution's tournament size
    children_per_cycle: int  # evolution's children scored together each cycle
    batch_size: int  # random and grid search: codes scored per call
    controller_batch: int  # REINFORCE: architectures sampled per update
    controller_hidden: int  # REINFORCE: LSTM width
    controller_lr: float
    entropy_weight: float
    baseline_decay: float


POSITIVE = ("budget", "population", "seeds", "steps_per_member", "sample_size", "children_per_cycle",
            "batch_size", "controller_batch", "controller_hidden")
DEFAULTS = {field.name: nas_defaults().search[field.name] for field in dataclasses.fields(SearchConfig)}


def search_config(config: Any = None, **overrides) -> SearchConfig:
    """A validated SearchConfig from ``config`` (None, a SearchConfig, the whole config with a ``search``
    section, the section itself, or a flat dict with ``search.*`` keys), then ``overrides``; fields
    not given are ``configs/nas.py``'s."""
    if isinstance(config, SearchConfig):
        values = dataclasses.asdict(config)
    else:
        section = search_section(config)
        values = {name: section[name] for name in DEFAULTS if name in section}
    values.update(overrides)
    cfg = SearchConfig(**{name: typed(name, values.get(name, default), default) for name, default in DEFAULTS.items()})
    for name in POSITIVE:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"search.{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.controller_lr <= 0 or cfg.entropy_weight < 0 or not 0 <= cfg.baseline_decay < 1:
        raise ValueError("search.controller_lr must be > 0, search.entropy_weight >= 0, 0 <= search.baseline_decay < 1; "
                         f"got {cfg.controller_lr}, {cfg.entropy_weight}, {cfg.baseline_decay}")
    return cfg


def typed(name: str, value, default):
    """``value`` as the type of ``default``: a string parsed as a ``--config.search.NAME`` flag is, a
    number kept when it has that type's value (2.0 is the int 2, 2.5 is no int)."""
    if isinstance(value, str):
        return convert_override(f"search.{name}", value, default)
    kind = type(default)
    try:
        if isinstance(value, bool) or (kind is int and float(value) != int(value)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"search.{name} must be {kind.__name__}, got {value!r}") from None


def search_section(config: Any) -> dict:
    """The ``search`` values of any form :func:`search_config` takes, as a plain dict."""
    if config is None:
        return {}
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        config = config.to_dict()
    config = dict(config)
    if "search" in config:
        return dict(config["search"])
    flat = {key.split(".", 1)[1]: value for key, value in config.items() if key.startswith("search.")}
    return flat or config

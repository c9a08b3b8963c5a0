"""The ``search`` config section as a typed, validated value, from a dict or an ml_collections config.

Tools rely on ``search.budget`` (architectures evaluated), ``search.population``, ``search.seeds`` and
``search.steps_per_member``; the rest tune the strategies. Keys this module does not know are left to
their owners (the scorer, the CLI), so they are ignored here, not rejected.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    budget: int = 300  # architectures evaluated per run
    population: int = 20  # regularized evolution's population
    seeds: int = 3  # runs per strategy in comparisons
    steps_per_member: int = 50  # training steps when the scorer trains members
    sample_size: int = 5  # evolution's tournament size
    children_per_cycle: int = 4  # evolution's children scored together each cycle
    batch_size: int = 16  # random and grid search: codes scored per call
    controller_batch: int = 10  # REINFORCE: architectures sampled per update
    controller_hidden: int = 32  # REINFORCE: LSTM width
    controller_lr: float = 0.01  # measured: 0.02+ sometimes collapses onto a wrong op within 40 updates
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.95


_POSITIVE = ("budget", "population", "seeds", "steps_per_member", "sample_size", "children_per_cycle",
             "batch_size", "controller_batch", "controller_hidden")


def search_config(config: Any = None, **overrides) -> SearchConfig:
    """A validated SearchConfig from ``config`` (None, a SearchConfig, the whole config with a ``search``
    section, the section itself, or a flat dict with ``search.*`` keys), then ``overrides``."""
    if isinstance(config, SearchConfig):
        values = dataclasses.asdict(config)
    else:
        values = {}
        section = _section(config)
        for field in dataclasses.fields(SearchConfig):
            if field.name in section:
                values[field.name] = section[field.name]
    values.update(overrides)
    typed = {}
    for field in dataclasses.fields(SearchConfig):
        if field.name not in values:
            continue
        value, kind = values[field.name], type(field.default)
        try:
            if isinstance(value, bool) or (kind is int and float(value) != int(value)):
                raise ValueError
            typed[field.name] = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"search.{field.name} must be {kind.__name__}, got {value!r}") from None
    cfg = SearchConfig(**typed)
    for name in _POSITIVE:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"search.{name} must be > 0, got {getattr(cfg, name)}")
    if cfg.controller_lr <= 0 or cfg.entropy_weight < 0 or not 0 <= cfg.baseline_decay < 1:
        raise ValueError("search.controller_lr must be > 0, search.entropy_weight >= 0, 0 <= search.baseline_decay < 1; "
                         f"got {cfg.controller_lr}, {cfg.entropy_weight}, {cfg.baseline_decay}")
    return cfg


def _section(config: Any) -> dict:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        config = config.to_dict()
    config = dict(config)
    if "search" in config:
        return dict(config["search"])
    flat = {key.split(".", 1)[1]: value for key, value in config.items() if key.startswith("search.")}
    return flat or config

"""The config a resumed run reads: the workdir's ``config.json``, and the fields a resume may not change.

``python -m launch.train --workdir=W`` alone continues the run in ``W`` with the config it was
trained with (``W/config.json``, written by the loop); overrides go on top. Fields that set the
shapes of the saved parameters (every ``model`` field except the few that change no shape, and
the input shape in ``data.seq_len`` / ``data.image_size``) must match the saved ones, so a changed
shape is refused in one line before any compile rather than found in the checkpoints.
"""

from __future__ import annotations

import json
import os

import ml_collections

from archlab.arch import with_new_model_fields
from archlab.train.config import ConfigError, resolve_config

RUN_CONFIG = "config.json"

# model fields that change no parameter shape (compute dtype, regularisation, rematerialisation)
# and ones read off the data at build time (``ModelSpec.from_data``), which the saved config holds
# resolved while a fresh --model config holds the default.
SHAPELESS_MODEL_FIELDS = frozenset({"dropout_rate", "dtype", "remat", "bn_momentum", "r1_gamma", "near", "far", "t_min",
                                    "sample_shape"})
INPUT_SHAPE_FIELDS = ("data.seq_len", "data.image_size")


def _tuples(value):
    """JSON turned the config's tuples into lists; a ConfigDict holds them as tuples."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def read_run_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The resolved config ``workdir/config.json`` holds, or None when there is none.

    A config.json that cannot be read or no longer validates is a one-line ConfigError naming it."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)["config"]
        if not isinstance(saved, dict):
            raise TypeError("its 'config' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a valid run config ({type(e).__name__}: {e}); give --model or --config") from None
    try:
        return resolve_config(ml_collections.ConfigDict(_tuples(with_new_model_fields(saved))))
    except ConfigError as e:
        raise ConfigError(f"{path} does not load as a config ({e}); give --model or --config") from None


def _flat(config: ml_collections.ConfigDict) -> dict:
    out = {}

    def walk(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = _tuples(value)

    walk(config.to_dict(), "")
    return out


def shape_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, where: str) -> list[str]:
    """``["model.num_layers: 4 in W/config.json, 6 given", ...]``: the shape-setting fields of
    ``config`` that differ from the run's saved config (``where`` names its file)."""
    old, new = _flat(saved), _flat(config)
    changes = []
    if saved.get("model_name") != config.get("model_name"):
        changes.append(f"model_name: {saved.get('model_name')!r} in {where}, {config.get('model_name')!r} given")
    keys = [k for k in new if k.startswith("model.") and k.split(".")[-1] not in SHAPELESS_MODEL_FIELDS]
    keys += [k for k in INPUT_SHAPE_FIELDS if k in new]
    for key in keys:
        if key in old and old[key] != new[key]:
            changes.append(f"{key}: {old[key]!r} in {where}, {new[key]!r} given")
        elif key not in old and key.startswith("model."):
            changes.append(f"{key}: absent from {where}, {new[key]!r} given")
    return changes

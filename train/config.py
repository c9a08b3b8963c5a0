"""Run configuration: the config a run reads, from a config file or a registry name, plus overrides.

The defaults live in ``configs/`` (one file per family, ``get_config(arg)``; ``configs/base.py``
holds the base every file starts from). ``get_config(model)`` loads the file a registry name points
at; ``load_config_file("configs/NAME.py[:arg]")`` loads one by path, as ``--config=`` does. Python
callers then set typed values (``config.train.steps = 400``); ``apply_overrides`` takes the CLI's
``--config.SECTION.FIELD=VALUE`` strings. Both end in :func:`validate` (also run by
``train_and_evaluate``), which refuses an unknown key, a wrong type or a bad value with one line.
"""

from __future__ import annotations

import importlib.util
import math
import os

import ml_collections

from archlab import configs
from archlab.arch import MODELS, get_model_spec
from archlab.configs.base import base_config  # noqa: F401  (re-exported: the base every config file starts from)
from archlab.train import augment, distill, early_stopping, profiling, regularize
from archlab.train.data import dataset_names
from archlab.train.data.images import parse_classes
from archlab.train.errors import ConfigError
from archlab.train.optim import optimizers, parse_group_learning_rates, prune


def get_config(model_name: str) -> ml_collections.ConfigDict:
    """The complete default config for ``--model=model_name``, locked (raises UnknownModelError).

    It is the registry entry's config file (``ModelSpec.config``, e.g. ``resnet34`` ->
    ``configs/resnet.py:r34``); set fields with typed values, ``config.train.steps = 400``.
    """
    config = configs.from_ref(get_model_spec(model_name).config)
    assert config.model_name == model_name, f"{get_model_spec(model_name).config} is a {config.model_name!r} config"
    config.lock()
    return config


def load_config_file(path_and_arg: str) -> ml_collections.ConfigDict:
    """``"configs/NAME.py[:arg]"`` -> that file's ``get_config(arg)`` (``get_config()`` without an
    arg), locked; as ml_collections' ``config_flags.DEFINE_config_file``. ``configs/NAME.py`` that is
    not under the current directory is the file installed with archlab. Any problem with the file is
    a one-line ConfigError naming it."""
    path, arg = split_path_and_arg(path_and_arg)
    shipped = os.path.join(os.path.dirname(configs.__file__), os.path.relpath(path, "configs"))
    if not os.path.exists(path) and os.path.normpath(path).startswith("configs" + os.sep) and os.path.isfile(shipped):
        path = shipped  # configs/NAME.py from another directory: the files installed with archlab
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist; give a Python file with get_config(arg), e.g. configs/transformer.py")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} is a directory; give a Python file with get_config(arg), e.g. configs/transformer.py")
    name = "archlab_config_file_" + "".join(ch if ch.isalnum() else "_" for ch in os.path.abspath(path))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as e:  # the file is the user's: any failure to run it is bad input
        raise ConfigError(f"config file {path!r} failed to load: {_one_line(e)}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path!r} defines no get_config(arg); a config file is a Python file whose get_config "
                          "returns an ml_collections.ConfigDict")
    call = f"get_config({arg!r})" if arg is not None else "get_config()"
    try:
        config = module.get_config(arg) if arg is not None else module.get_config()
    except Exception as e:
        raise ConfigError(f"config file {path!r}: {call} raised {_one_line(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {path!r}: {call} returned a {type(config).__name__}, not an ml_collections.ConfigDict")
    config.lock()
    return config


def split_path_and_arg(path_and_arg: str) -> tuple[str, str | None]:
    """``"a/b.py:arg"`` -> ("a/b.py", "arg"), ``"a/b.py"`` -> ("a/b.py", None); a path that exists
    as given keeps any ``:`` in it."""
    if not path_and_arg.strip():
        raise ConfigError("--config is empty; give a config file, configs/NAME.py[:arg]")
    if os.path.exists(path_and_arg) or ":" not in path_and_arg:
        return path_and_arg, None
    path, _, arg = path_and_arg.partition(":")
    return path, arg


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert_override(key: str, raw: str, current):
    """Parses ``raw`` to the type of the current value of ``key``."""
    kind = type(current)
    try:
        if kind is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ConfigError(f"bad value for config.{key}: {raw!r} is not a finite number")
            return value
        if kind is str:
            return raw
        if kind is tuple:
            element = type(current[0]) if current else str
            return tuple(element(p.strip()) for p in raw.split(",") if p.strip())
    except ConfigError:
        raise
    except ValueError:
        pass
    raise ConfigError(f"bad value for config.{key}: {raw!r} is not a valid {kind.__name__}")


def override_fields(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """An unlocked copy of ``config`` with ``{"SECTION.FIELD": "VALUE", ...}`` set, each string typed by
    :func:`convert_override`; an unknown key is a ConfigError naming the valid ones. The one parser
    of ``--config.X=V`` flags (launch.train and launch.nas); nothing is validated here."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, raw in overrides.items():
        node = config
        parts = key.split(".")
        for depth, part in enumerate(parts):
            is_last = depth == len(parts) - 1
            valid = sorted(node.keys())
            where = ".".join(parts[:depth]) or "the config"
            if part not in node:
                raise ConfigError(f"unknown config key config.{key}: no {part!r} in {where}; valid: {', '.join(valid)}")
            if is_last:
                if isinstance(node[part], ml_collections.ConfigDict):
                    raise ConfigError(f"config.{key} is a section, not a field; valid fields: {', '.join(sorted(node[part].keys()))}")
                node[part] = convert_override(key, raw, node[part])
            else:
                if not isinstance(node[part], ml_collections.ConfigDict):
                    raise ConfigError(f"config.{'.'.join(parts[: depth + 1])} is a field, not a section")
                node = node[part]
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Returns a copy of ``config`` with ``{"train.steps": "50", ...}`` applied, each string typed by
    the field's current value, resolved and validated (:func:`resolve_config`).

    Choosing another ``data.dataset`` first applies that dataset's values from the family's config
    file (``DATASET_DEFAULTS``, e.g. the GAN's digits settings), then the user's overrides on top.
    """
    check_fields(config)
    config = ml_collections.ConfigDict(config.to_dict())
    dataset = overrides.get("data.dataset", "")
    if dataset and config.get("model_name", "") in MODELS:
        family = configs.family_module(MODELS[config.model_name].config)
        for section, values in getattr(family, "DATASET_DEFAULTS", {}).get(dataset, {}).items():
            config[section].update(values)
    config = override_fields(config, overrides)
    if config.data.classes and "num_classes" in config.model and "model.num_classes" not in overrides:
        try:  # a subset of k labels is relabelled 0..k-1: a k-way head unless the user says otherwise
            config.model.num_classes = len(parse_classes(config.data.classes))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return resolve_config(config)


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A locked, validated copy of ``config`` with its ``auto`` choices made: what a run reads.

    ``train_and_evaluate`` calls it, so values a Python caller set (``config.train.steps = 400``)
    are checked as the CLI's are. Idempotent.
    """
    check_fields(config)
    config = ml_collections.ConfigDict(config.to_dict())
    if config.train.loss_scaling == "auto":  # resolved here so config.json and make_optimizer see the real choice
        config.train.loss_scaling = "dynamic" if config.model.get("dtype") == "float16" else "none"
    validate(config)
    config.lock()
    return config


_MISSING = object()
_KINDS = {bool: "a bool", int: "an int", float: "a number", str: "a string", tuple: "a tuple"}


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Refuses an empty or unknown model_name, and any field of the model's default config that is
    missing or holds another type (ml_collections lets None through, and after a None any type)."""
    name = config.get("model_name", _MISSING)
    if not isinstance(name, str) or not name:
        got = "missing" if name is _MISSING else repr(name)
        raise ConfigError(f"config.model_name is {got}; valid models: {', '.join(sorted(MODELS))}")
    check_like(config, configs.from_ref(get_model_spec(name).config),
               "a config file starts from configs.base.base_config() and sets every field of its family's model section "
               f"(see configs/{get_model_spec(name).config.partition(':')[0]})")


def check_like(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, hint: str) -> None:
    """Refuses any field of ``reference`` (the defaults) that ``config`` lacks or holds with another
    type; ``hint`` says, after a missing field, what a config file must set."""
    actual = config.to_dict()
    for key, default in _leaves(reference.to_dict()):
        value = actual
        for part in key.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            raise ConfigError(f"config.{key} is missing; {hint}")
        if not _same_kind(value, default):
            raise ConfigError(f"config.{key} must be {_KINDS.get(type(default), type(default).__name__)}, as its default "
                              f"{default!r} (got {value!r})")


def _same_kind(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list)) and (not default or all(_same_kind(v, default[0]) for v in value))
    return True


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects values that parse but make no sense, naming the field and what is allowed."""
    check_fields(config)
    t = config.train
    checks = [
        (t.steps >= 1, "train.steps must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.learning_rate > 0, "train.learning_rate must be > 0"),
        (t.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1"),
        (t.batch_size % max(t.grad_accum_steps, 1) == 0, "train.batch_size must be divisible by train.grad_accum_steps"),
        (t.log_every >= 1, "train.log_every must be >= 1"),
        (t.eval_every >= 1, "train.eval_every must be >= 1"),
        (config.checkpoint.every >= 1, "checkpoint.every must be >= 1"),
        (config.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
        (config.data.seq_len >= 2, "data.seq_len must be >= 2"),
        (0.0 < config.data.val_fraction < 1.0, "data.val_fraction must be in (0, 1)"),
        (config.data.image_size >= 0, "data.image_size must be >= 0"),
        (config.data.get("train_examples", 0) >= 0, "data.train_examples must be >= 0 (0 = every training image)"),
        (config.data.get("validation_examples", 0) >= 0, "data.validation_examples must be >= 0 (0 = no validation split)"),
        (config.parallel.mode in ("jit", "pmap"), f"parallel.mode must be jit or pmap (got {config.parallel.mode!r})"),
        (config.parallel.distributed in ("auto", "off", "explicit"),
         f"parallel.distributed must be auto, off or explicit (got {config.parallel.distributed!r})"),
        (config.parallel.num_devices >= 0, "parallel.num_devices must be >= 0 (0 means every device)"),
        (config.parallel.heartbeat_timeout_s >= 1, "parallel.heartbeat_timeout_s must be >= 1"),
        (config.parallel.initialization_timeout_s >= 1, "parallel.initialization_timeout_s must be >= 1"),
    ]

    datasets = dataset_names(get_model_spec(config.model_name).task) if config.model_name else ()
    if config.data.dataset and datasets:
        checks.append((config.data.dataset in datasets, f"data.dataset must be one of {', '.join(datasets)} for this model (got {config.data.dataset!r})"))
    if config.train.group_learning_rates and config.model_name:
        try:
            parse_group_learning_rates(config.train.group_learning_rates, get_model_spec(config.model_name).param_groups)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    checks.append((config.train.loss_scaling in ("auto", "dynamic", "none"),
                   f"train.loss_scaling must be auto, dynamic or none (got {config.train.loss_scaling!r})"))
    if config.data.classes:
        try:
            parse_classes(config.data.classes)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    checks += [(False, message) for message in get_model_spec(config.model_name).config_problems(config)]

    for module in (optimizers, prune, regularize, augment, early_stopping, distill, profiling):
        checks += [(False, message) for message in module.config_problems(config.train)]
    if "sample" in config:
        checks += sample_problems(config.sample, config.model.get("vocab_size", 256))
        if config.model.get("positional") == "learned":
            prompt_len = min(len(config.sample.prompt.encode("utf-8", errors="surrogatepass")), config.model.max_len)
            checks.append((prompt_len + config.sample.length <= config.model.max_len,
                           f"sample.length={config.sample.length} plus the prompt's {prompt_len} bytes exceeds model.max_len="
                           f"{config.model.max_len}, the most a model with learned positions can generate"))
    checks += [(False, f"config.{key} must be a finite number (got {value})")
               for key, value in _leaves(config.to_dict()) if isinstance(value, float) and not math.isfinite(value)]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def sample_problems(s: ml_collections.ConfigDict, vocab_size: int = 256) -> list[tuple[bool, str]]:
    """Checks of the ``sample`` section (the text drawn at the end of an LM run), so a bad value is
    refused before training rather than after it."""
    return [
        (s.length >= 1, f"sample.length must be >= 1 (got {s.length})"),
        (s.temperature >= 0, f"sample.temperature must be >= 0, 0 = greedy (got {s.temperature})"),
        (0 <= s.top_k <= vocab_size, f"sample.top_k must be in [0, {vocab_size}] (model.vocab_size), 0 = all tokens (got {s.top_k})"),
        (0.0 <= s.get("top_p", 0.0) <= 1.0, f"sample.top_p must be in [0, 1], 0 or 1 = off (got {s.get('top_p', 0.0)})"),
        (_is_utf8(s.prompt), f"sample.prompt {s.prompt!r} is not valid UTF-8 text"),
    ]


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False

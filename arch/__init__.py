"""The model registry: ``--model=NAME`` -> :class:`ModelSpec`.

A model family is one file in ``arch/``, its config file in ``configs/`` (every default lives
there) and one line in ``MODELS`` below.
"""

from __future__ import annotations

from archlab import short_names  # noqa: E402

short_names.alias(__name__)  # imported as ``arch``: become ``archlab.arch`` (archlab/short_names.py)

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from archlab.arch.cnn import CNN
from archlab.arch.dehaze import DehazeNet
from archlab.arch.gan import GAN
from archlab.arch.inception import InceptionNet
from archlab.arch.mlp import MLP
from archlab.arch.nas_cell import NASCellNet
from archlab.arch.nerf import NeRF
from archlab.arch.quant import QUANT_MODES
from archlab.arch.resnet import ResNet
from archlab.arch.rnn import RecurrentClassifier, RecurrentLM
from archlab.arch.transformer import TransformerLM
from archlab.configs import from_ref

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPE_FIELDS = ("dtype", "param_dtype")  # model fields given by name in configs, as jnp dtypes to modules


def resolve_dtype(name: str):
    """Maps a config dtype name to a jnp dtype; raises ValueError naming the valid names."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def module_kwargs(model_config) -> dict[str, Any]:
    """The ``model`` config section as a module's keyword arguments: dtype names as jnp dtypes, and
    lists (a config read back from JSON) as tuples, so the module's fields stay hashable."""
    fields = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    return {key: resolve_dtype(value) if key in DTYPE_FIELDS else _tuples(value) for key, value in fields.items()}


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the trainer needs to know about a model family.

    module: the flax module class, built as ``module(**config.model)``: its fields are exactly the
        ``model`` config section's keys (plus ``decode`` for autoregressive sampling, where it has one).
        It may define ``config_problems(model, data) -> list[str]`` to check its own values.
    config: its default config, ``configs/<file>.py[:arg]`` written ``"<file>.py[:arg]"``; the
        config files are the one source of defaults (``--model=NAME`` loads this one).
    task: which loss/metrics/data pipeline in ``train/tasks/`` trains it.
    example_input: a batch-of-one input for init, shape checks and export.
    param_groups: top-level param names that each get their own optimizer (a GAN's two players).
    from_data: model config values read off the built dataset (e.g. a generator's output shape),
        applied before the module is built and recorded in the run's config.json.
    """

    name: str
    module: type[nn.Module]
    config: str
    task: str
    example_input: Callable[[Any], np.ndarray]
    param_groups: tuple[str, ...] = ()
    from_data: Callable[[Any, Any], dict[str, Any]] | None = None  # (model_config, dataset) -> updates

    def make_module(self, model_config, decode: bool = False) -> nn.Module:
        """``module(**model_config)``; ``decode=True`` builds the sampling variant where the module has one."""
        kwargs = module_kwargs(model_config)
        if decode and "decode" in {field.name for field in dataclasses.fields(self.module)}:
            kwargs["decode"] = True
        return self.module(**kwargs)

    def model_defaults(self) -> dict[str, Any]:
        """The default ``model`` config section, read from its config file."""
        return from_ref(self.config).model.to_dict()

    def config_problems(self, config) -> list[str]:
        """What is wrong with ``config.model``: the dtype names, quantization mode and class count families share,
        then the module's own ``config_problems``."""
        model = config.model
        problems = [f"model.{field} must be one of {', '.join(DTYPES)} (got {model[field]!r})"
                    for field in DTYPE_FIELDS if field in model and model[field] not in DTYPES]
        if "quant" in model and model.quant not in QUANT_MODES:
            problems.append(f"model.quant must be one of {', '.join(QUANT_MODES)} (got {model.quant!r})")
        if "num_classes" in model and model.num_classes < 2:
            problems.append("model.num_classes must be >= 2")
        own_checks = getattr(self.module, "config_problems", None)
        return problems + (own_checks(model, config.data) if own_checks is not None else [])


def _context_input(config) -> np.ndarray:
    return np.zeros((1, config.model.max_len), np.int32)  # a full context window of token ids


def _sequence_input(config) -> np.ndarray:
    return np.zeros((1, config.data.seq_len), np.int32)


def _nerf_input(config) -> np.ndarray:
    return np.array([[0.0, 0.0, 4.0, 0.0, 0.0, -1.0]], np.float32)  # one ray: origin (3) + direction (3)


def _image_input(config) -> np.ndarray:
    size = config.data.image_size or 8
    return np.zeros((1, size, size, 1), np.float32)


def _gan_sample_shape(model_config, data) -> dict[str, Any]:
    return {"sample_shape": tuple(int(n) for n in data.example_input.shape[1:])}


MODELS: dict[str, ModelSpec] = {
    "transformer": ModelSpec("transformer", TransformerLM, "transformer.py", "lm", _context_input),
    "mlp": ModelSpec("mlp", MLP, "mlp.py", "classification", _image_input),
    "cnn": ModelSpec("cnn", CNN, "cnn.py", "classification", _image_input),
    "lstm": ModelSpec("lstm", RecurrentLM, "rnn.py:lstm", "lm", _sequence_input),
    "gru": ModelSpec("gru", RecurrentLM, "rnn.py:gru", "lm", _sequence_input),
    "rnn": ModelSpec("rnn", RecurrentLM, "rnn.py:rnn", "lm", _sequence_input),
    "gan": ModelSpec("gan", GAN, "gan.py", "gan", lambda config: np.zeros((1, 2), np.float32),
                     param_groups=("generator", "discriminator"), from_data=_gan_sample_shape),
    "nerf": ModelSpec("nerf", NeRF, "nerf.py", "nerf", _nerf_input),
    "inception": ModelSpec("inception", InceptionNet, "inception.py", "classification", _image_input),
    "nas_cell": ModelSpec("nas_cell", NASCellNet, "nas_cell.py", "classification", _image_input),
    "dehaze": ModelSpec("dehaze", DehazeNet, "dehaze.py", "restoration", _image_input),
    "lstm_classifier": ModelSpec("lstm_classifier", RecurrentClassifier, "rnn.py:lstm_classifier", "classification", _sequence_input),
    "gru_classifier": ModelSpec("gru_classifier", RecurrentClassifier, "rnn.py:gru_classifier", "classification", _sequence_input),
    "rnn_classifier": ModelSpec("rnn_classifier", RecurrentClassifier, "rnn.py:rnn_classifier", "classification", _sequence_input),
    "resnet18": ModelSpec("resnet18", ResNet, "resnet.py:r18", "classification", _image_input),
    "resnet34": ModelSpec("resnet34", ResNet, "resnet.py:r34", "classification", _image_input),
    "resnet50": ModelSpec("resnet50", ResNet, "resnet.py:r50", "classification", _image_input),
}


def build_module(name: str, decode: bool = False, **fields) -> nn.Module:
    """Model ``name`` as its config file defines it, with ``fields`` changed (names as in the
    ``model`` config section, dtypes by name): ``build_module("cnn", channels=(4,), dtype="bfloat16")``."""
    spec = get_model_spec(name)
    unknown = sorted(set(fields) - set(spec.model_defaults()))
    if unknown:
        raise TypeError(f"{name} has no model field {', '.join(unknown)}; its fields: {', '.join(spec.model_defaults())}")
    return spec.make_module({**spec.model_defaults(), **fields}, decode=decode)


def with_new_model_fields(saved_config: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config (its config.json ``config``) with any ``model`` field added to the family
    since at its default (e.g. ``depth``/``kind``, which older runs took from the registry name)."""
    spec, model = MODELS.get(saved_config.get("model_name")), saved_config.get("model")
    if spec is None or not isinstance(model, dict):
        return saved_config  # left for validation to name
    return {**saved_config, "model": {**spec.model_defaults(), **model}}


class UnknownModelError(ValueError):
    """Raised for a ``--model`` name that is not in the registry."""


def get_model_spec(name: str) -> ModelSpec:
    """Returns the registered spec, or raises UnknownModelError listing the valid names."""
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    return MODELS[name]

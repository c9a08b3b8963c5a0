"""The model registry: ``--model=NAME`` -> :class:`ModelSpec`.

A model family is one file in ``arch/`` plus one line in ``MODELS`` below.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(name: str):
    """Maps a config dtype name to a jnp dtype; raises ValueError naming the valid names."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(_DTYPES)}")
    return _DTYPES[name]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the trainer needs to know about a model family.

    make_module: builds the flax module from the ``model`` config section (plus ``decode``).
    model_defaults: the default ``model`` config section.
    task: which loss/metrics/data pipeline in ``train/tasks.py`` trains it.
    example_input: a batch-of-one input for init, shape checks and export.
    param_groups: top-level param names that each get their own optimizer (a GAN's two players).
    from_data: model config values read off the built dataset (e.g. a generator's output shape),
        applied before the module is built and recorded in the run's config.json.
    """

    name: str
    make_module: Callable[..., nn.Module]
    model_defaults: Callable[[], dict[str, Any]]
    task: str
    example_input: Callable[[Any], np.ndarray]
    param_groups: tuple[str, ...] = ()
    from_data: Callable[[Any, Any], dict[str, Any]] | None = None  # (model_config, dataset) -> updates


def _transformer_module(model_config, decode: bool = False) -> nn.Module:
    from arch.transformer import TransformerLM

    c = model_config
    return TransformerLM(
        vocab_size=c.vocab_size,
        num_layers=c.num_layers,
        d_model=c.d_model,
        num_heads=c.num_heads,
        mlp_dim=c.mlp_dim,
        max_len=c.max_len,
        dropout_rate=c.dropout_rate,
        positional=c.positional,
        tie_embeddings=c.tie_embeddings,
        scan_layers=c.scan_layers,
        remat=c.remat,
        decode=decode,
        dtype=resolve_dtype(c.dtype),
        param_dtype=resolve_dtype(c.param_dtype),
    )


def _transformer_defaults() -> dict[str, Any]:
    return dict(
        vocab_size=256,
        num_layers=4,
        d_model=128,
        num_heads=4,
        mlp_dim=512,
        max_len=128,
        dropout_rate=0.0,
        positional="rotary",
        tie_embeddings=True,
        scan_layers=False,
        remat=False,
        dtype="float32",
        param_dtype="float32",
    )


def _mlp_module(model_config, decode: bool = False) -> nn.Module:
    from arch.mlp import MLP

    c = model_config
    return MLP(hidden=tuple(c.hidden), num_classes=c.num_classes, activation=c.activation, dropout_rate=c.dropout_rate,
               dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))


def _cnn_module(model_config, decode: bool = False) -> nn.Module:
    from arch.cnn import CNN

    c = model_config
    return CNN(channels=tuple(c.channels), dense=c.dense, num_classes=c.num_classes, activation=c.activation,
               dropout_rate=c.dropout_rate, dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))


_PRECISION = dict(dtype="float32", param_dtype="float32")


def _resnet_module(depth: int):
    def make(model_config, decode: bool = False) -> nn.Module:
        from arch.resnet import ResNet

        c = model_config
        return ResNet(depth=depth, num_classes=c.num_classes, width=c.width, stem=c.stem, bn_momentum=c.bn_momentum,
                      dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))

    return make


def _resnet_defaults() -> dict[str, Any]:
    return dict(num_classes=10, width=16, stem="cifar", bn_momentum=0.9, **_PRECISION)


def _recurrent_module(kind: str):
    def make(model_config, decode: bool = False) -> nn.Module:
        from arch.rnn import RecurrentLM

        c = model_config
        return RecurrentLM(kind=kind, vocab_size=c.vocab_size, embed_dim=c.embed_dim, hidden=c.hidden, num_layers=c.num_layers,
                           dropout_rate=c.dropout_rate, decode=decode, dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))

    return make


def _recurrent_defaults() -> dict[str, Any]:
    # max_len only bounds the prompt the sampler feeds; the recurrent state has no context limit.
    return dict(vocab_size=256, embed_dim=64, hidden=512, num_layers=1, dropout_rate=0.0, max_len=128, **_PRECISION)


def _image_input(config) -> np.ndarray:
    size = config.data.image_size or 8
    return np.zeros((1, size, size, 1), np.float32)


MODELS: dict[str, ModelSpec] = {
    "transformer": ModelSpec(
        "transformer",
        _transformer_module,
        _transformer_defaults,
        "lm",
        lambda config: np.zeros((1, config.model.max_len), np.int32),
    ),
    "mlp": ModelSpec(
        "mlp", _mlp_module,
        lambda: dict(hidden=(256, 256), num_classes=10, activation="relu", dropout_rate=0.1, **_PRECISION),
        "classification", _image_input,
    ),
    "cnn": ModelSpec(
        "cnn", _cnn_module,
        lambda: dict(channels=(32, 64), dense=128, num_classes=10, activation="relu", dropout_rate=0.1, **_PRECISION),
        "classification", _image_input,
    ),
    **{
        kind: ModelSpec(kind, _recurrent_module(kind), _recurrent_defaults, "lm", lambda config: np.zeros((1, config.data.seq_len), np.int32))
        for kind in ("lstm", "gru", "rnn")
    },
    **{
        f"resnet{depth}": ModelSpec(f"resnet{depth}", _resnet_module(depth), _resnet_defaults, "classification", _image_input)
        for depth in (18, 34, 50)
    },
}


class UnknownModelError(ValueError):
    """Raised for a ``--model`` name that is not in the registry."""


def get_model_spec(name: str) -> ModelSpec:
    """Returns the registered spec, or raises UnknownModelError listing the valid names."""
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    return MODELS[name]

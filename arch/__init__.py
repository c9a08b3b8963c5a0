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
from archlab.arch.resnet import ResNet
from archlab.arch.rnn import RecurrentClassifier, RecurrentLM
from archlab.arch.transformer import TransformerLM
from archlab.configs import from_ref

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
    config: its default config, ``configs/<file>.py[:arg]`` written ``"<file>.py[:arg]"``; the
        config files are the one source of defaults (``--model=NAME`` loads this one).
    task: which loss/metrics/data pipeline in ``train/tasks/`` trains it.
    example_input: a batch-of-one input for init, shape checks and export.
    param_groups: top-level param names that each get their own optimizer (a GAN's two players).
    from_data: model config values read off the built dataset (e.g. a generator's output shape),
        applied before the module is built and recorded in the run's config.json.
    """

    name: str
    make_module: Callable[..., nn.Module]
    config: str
    task: str
    example_input: Callable[[Any], np.ndarray]
    param_groups: tuple[str, ...] = ()
    from_data: Callable[[Any, Any], dict[str, Any]] | None = None  # (model_config, dataset) -> updates

    def model_defaults(self) -> dict[str, Any]:
        """The default ``model`` config section, read from its config file."""

        return from_ref(self.config).model.to_dict()


def _transformer_module(model_config, decode: bool = False) -> nn.Module:
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


def _mlp_module(model_config, decode: bool = False) -> nn.Module:
    c = model_config
    return MLP(hidden=tuple(c.hidden), num_classes=c.num_classes, activation=c.activation, dropout_rate=c.dropout_rate,
               dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype), quant=c.get("quant", "none"))


def _cnn_module(model_config, decode: bool = False) -> nn.Module:
    c = model_config
    return CNN(channels=tuple(c.channels), dense=c.dense, num_classes=c.num_classes, activation=c.activation,
               dropout_rate=c.dropout_rate, dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype), quant=c.get("quant", "none"))


def _resnet_module(depth: int):
    def make(model_config, decode: bool = False) -> nn.Module:
        c = model_config
        return ResNet(depth=depth, num_classes=c.num_classes, width=c.width, stem=c.stem, bn_momentum=c.bn_momentum,
                      dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype), quant=c.get("quant", "none"))

    return make


def _recurrent_module(kind: str):
    def make(model_config, decode: bool = False) -> nn.Module:
        c = model_config
        return RecurrentLM(kind=kind, vocab_size=c.vocab_size, embed_dim=c.embed_dim, hidden=c.hidden, num_layers=c.num_layers,
                           dropout_rate=c.dropout_rate, decode=decode, dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))

    return make


def _recurrent_classifier_module(kind: str):
    def make(model_config, decode: bool = False) -> nn.Module:
        c = model_config
        return RecurrentClassifier(kind=kind, num_classes=c.num_classes, vocab_size=c.vocab_size, embed_dim=c.embed_dim, hidden=c.hidden,
                                   num_layers=c.num_layers, dropout_rate=c.dropout_rate, dtype=resolve_dtype(c.dtype),
                                   param_dtype=resolve_dtype(c.param_dtype))

    return make


def _gan_module(model_config, decode: bool = False) -> nn.Module:
    c = model_config
    return GAN(sample_shape=tuple(c.sample_shape), latent_dim=c.latent_dim, style_dim=c.style_dim, mapping_layers=c.mapping_layers,
               width=c.width, synthesis_layers=c.synthesis_layers, disc_width=c.disc_width, disc_layers=c.disc_layers, r1_gamma=c.r1_gamma)


def _nerf_module(model_config, decode: bool = False) -> nn.Module:
    c = model_config
    return NeRF(num_layers=c.num_layers, width=c.width, pos_frequencies=c.pos_frequencies, dir_frequencies=c.dir_frequencies,
                num_coarse=c.num_coarse, num_fine=c.num_fine, near=c.near, far=c.far, background=c.background,
                dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))


def _nerf_input(config) -> np.ndarray:
    return np.array([[0.0, 0.0, 4.0, 0.0, 0.0, -1.0]], np.float32)  # one ray: origin (3) + direction (3)


def _inception_module(model_config, decode: bool = False) -> nn.Module:
    c = model_config
    return InceptionNet(num_classes=c.num_classes, stem_features=c.stem_features, stages=tuple(c.stages), branch_widths=tuple(c.branch_widths),
                        factorize_5x5=c.factorize_5x5, residual=c.residual, batch_norm=c.batch_norm, bn_momentum=c.bn_momentum,
                        dropout_rate=c.dropout_rate, dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))


def _dehaze_module(model_config, decode: bool = False) -> nn.Module:
    c = model_config
    return DehazeNet(width=c.width, dilations=tuple(c.dilations), airlight_hidden=c.airlight_hidden, t_min=c.t_min,
                     dtype=resolve_dtype(c.dtype), param_dtype=resolve_dtype(c.param_dtype))


def _nas_cell_module(model_config, decode: bool = False) -> nn.Module:
    c = model_config
    return NASCellNet(genotype=c.genotype, channels=c.channels, num_classes=c.num_classes)


def _image_input(config) -> np.ndarray:
    size = config.data.image_size or 8
    return np.zeros((1, size, size, 1), np.float32)


MODELS: dict[str, ModelSpec] = {
    "transformer": ModelSpec(
        "transformer", _transformer_module, "transformer.py", "lm", lambda config: np.zeros((1, config.model.max_len), np.int32),
    ),
    "mlp": ModelSpec("mlp", _mlp_module, "mlp.py", "classification", _image_input),
    "cnn": ModelSpec("cnn", _cnn_module, "cnn.py", "classification", _image_input),
    **{
        kind: ModelSpec(kind, _recurrent_module(kind), f"rnn.py:{kind}", "lm", lambda config: np.zeros((1, config.data.seq_len), np.int32))
        for kind in ("lstm", "gru", "rnn")
    },
    "gan": ModelSpec(
        "gan", _gan_module, "gan.py", "gan", lambda config: np.zeros((1, 2), np.float32),
        param_groups=("generator", "discriminator"),
        from_data=lambda model_config, data: {"sample_shape": tuple(int(n) for n in data.example_input.shape[1:])},
    ),
    "nerf": ModelSpec("nerf", _nerf_module, "nerf.py", "nerf", _nerf_input),
    "inception": ModelSpec("inception", _inception_module, "inception.py", "classification", _image_input),
    "nas_cell": ModelSpec("nas_cell", _nas_cell_module, "nas_cell.py", "classification", _image_input),
    "dehaze": ModelSpec("dehaze", _dehaze_module, "dehaze.py", "restoration", _image_input),
    **{
        f"{kind}_classifier": ModelSpec(
            f"{kind}_classifier", _recurrent_classifier_module(kind), f"rnn.py:{kind}_classifier",
            "classification", lambda config: np.zeros((1, config.data.seq_len), np.int32),
        )
        for kind in ("lstm", "gru", "rnn")
    },
    **{
        f"resnet{depth}": ModelSpec(f"resnet{depth}", _resnet_module(depth), f"resnet.py:r{depth}", "classification", _image_input)
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

"""The latest checkpoint of a training workdir as a pure inference function.

Every family exports the function a deployment calls, with its params (and BatchNorm statistics,
frozen: ``deterministic=True``) as one pytree ``variables``:

- classifiers, restoration and language models: ``module.apply(variables, x)``; LMs map int32
  tokens [batch, length] (length fixed by the run) to logits [batch, length, vocab];
- the GAN: its generator, latents [batch, latent_dim] -> samples;
- NeRF: its fine field F(x, d) -> (rgb, sigma), one sample (position, view direction) per row.

The params come from ``train.workdir.restore_params``, the trainer's own restore.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from archlab.arch import get_model_spec
from archlab.arch.nerf import NeRFField
from archlab.deploy import ExportError
from archlab.train.optim import make_optimizer
from archlab.train.state import abstract_train_state
from archlab.train.workdir import load_run_info, restore_params


@dataclasses.dataclass(frozen=True)
class InferenceModel:
    """``apply(variables, x) -> tuple of arrays`` named ``output_names``; the batch axis is dynamic."""

    model_name: str
    step: int
    apply: Callable[[Any, jax.Array], tuple]
    variables: Any
    input_name: str
    input_shape: tuple[int, ...]  # one example, without the batch axis
    input_dtype: str
    output_names: tuple[str, ...]
    token_range: int = 0  # int inputs: token ids are drawn from [0, token_range)

    def __call__(self, x) -> tuple:
        return self.apply(self.variables, x)

    def input_batch(self, batch: int, seed: int = 0) -> np.ndarray:
        """A fixed, seeded input batch in the range the model was trained on."""
        rng = np.random.default_rng(seed)
        shape = (batch, *self.input_shape)
        if np.issubdtype(np.dtype(self.input_dtype), np.integer):
            return rng.integers(0, max(self.token_range, 1), shape).astype(self.input_dtype)
        if self.input_name == "latents":
            return rng.standard_normal(shape).astype(self.input_dtype)
        if self.input_name == "samples":  # NeRF: positions in the scene's box, unit view directions
            points = rng.uniform(-1.5, 1.5, (batch, 3))
            dirs = rng.standard_normal((batch, 3))
            dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
            return np.concatenate([points, dirs], axis=-1).astype(self.input_dtype)
        return rng.uniform(0.0, 1.0, shape).astype(self.input_dtype)


def unrolled(config, params):
    """A scan-over-layers run as the same model unrolled: ``layers/<leaf> [L, ...]`` becomes
    ``layer_<i>/<leaf>``, and ``model.scan_layers`` false.

    Scanning layers is a compile-time device of training; the exported graph is the same
    computation either way, and unrolled it needs no ONNX ``Loop`` (jax2onnx 0.17 cannot convert
    the scanned block under a symbolic batch: its reshapes see a traced shape).
    """
    import ml_collections

    config = ml_collections.ConfigDict(config.to_dict())
    config.model.scan_layers = False
    params = dict(params)
    stacked = params.pop("layers")
    for i in range(int(config.model.num_layers)):
        params[f"layer_{i}"] = jax.tree.map(lambda leaf: leaf[i], stacked)
    return config, params


def inference_model(config, params, model_state, step: int, example_shape: tuple[int, ...], example_dtype: str) -> InferenceModel:
    """Builds the inference function of a restored run (see the module docstring)."""
    spec = get_model_spec(config.model_name)
    if config.model.get("scan_layers"):
        config, params = unrolled(config, params)
    module = spec.make_module(config.model)
    variables = {"params": params, **dict(model_state or {})}
    name = config.model_name
    common = dict(model_name=name, step=step)
    if spec.task == "gan":
        latent_dim = int(config.model.latent_dim)

        def generate(variables, z):
            return (module.apply({"params": variables["params"]}, z, method=module.generate),)

        return InferenceModel(apply=generate, variables={"params": params}, input_name="latents", input_shape=(latent_dim,),
                              input_dtype="float32", output_names=("samples",), **common)
    if spec.task == "nerf":
        c = config.model
        # the exported radiance field computes in float32 whatever the run trained in
        field = NeRFField(c.num_layers, c.width, c.pos_frequencies, c.dir_frequencies, dtype=jnp.float32, param_dtype=jnp.float32)

        def radiance(variables, samples):
            rgb, sigma = field.apply({"params": variables["params"]["fine"]}, samples[:, None, :3], samples[:, 3:])
            return rgb[:, 0], sigma[:, 0]

        return InferenceModel(apply=radiance, variables={"params": params}, input_name="samples", input_shape=(6,),
                              input_dtype="float32", output_names=("rgb", "sigma"), **common)

    is_int = np.issubdtype(np.dtype(example_dtype), np.integer)
    output = {"lm": "logits", "classification": "logits", "restoration": "restored"}.get(spec.task)
    if output is None:
        raise ExportError(f"model {name!r} (task {spec.task!r}) has no inference function to export")

    def forward(variables, x):
        return (module.apply(variables, x, deterministic=True),)

    return InferenceModel(apply=forward, variables=variables, input_name="tokens" if is_int else "images",
                          input_shape=tuple(int(n) for n in example_shape[1:]), input_dtype=str(np.dtype(example_dtype)),
                          output_names=(output,), token_range=int(config.model.get("vocab_size", 256)) if is_int else 0, **common)


def load_inference_model(workdir: str, notify=print) -> InferenceModel:
    """The inference function of the latest intact checkpoint in ``workdir``.

    Raises ``train.checkpoint.CheckpointError`` (no run, no checkpoint) with a one-line message.
    """
    info = load_run_info(workdir)
    config, params, model_state, step = restore_params(workdir, notify=notify)
    if "example_input" in info:
        shape, dtype = tuple(info["example_input"]["shape"]), info["example_input"]["dtype"]
    else:
        example = np.asarray(get_model_spec(config.model_name).example_input(config))
        shape, dtype = example.shape, str(example.dtype)
    to_host = lambda tree: jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)
    return inference_model(config, to_host(params), to_host(model_state), int(step), shape, dtype)


def jit_runner(model: InferenceModel) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The JAX reference: ``x -> [outputs as numpy]``, jitted with the variables as an argument."""
    compiled = jax.jit(model.apply)
    variables = jax.tree.map(jnp.asarray, model.variables)

    def run(x):
        return [np.asarray(y) for y in jax.block_until_ready(compiled(variables, x))]

    return run


def random_inference_model(config, example: np.ndarray | None = None, seed: int = 0) -> InferenceModel:
    """The inference function of ``config`` with seeded random params of the trainer's shapes.

    For timing and conversion checks that need no training: shapes come from ``jax.eval_shape`` of
    the trainer's init (compiling a ResNet's init took 20 s here), values are normals scaled by
    fan-in, BatchNorm variances positive.
    """
    import flax.linen as nn

    spec = get_model_spec(config.model_name)
    module = spec.make_module(config.model)
    if example is None:
        example = np.asarray(spec.example_input(config))
    shapes = nn.meta.unbox(abstract_train_state(module, make_optimizer(config.train, spec.param_groups), example))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        values = rng.standard_normal(leaf.shape) / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
        if "var" in str(path[-1]):
            values = 1.0 + np.abs(values)
        return values.astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(fill, shapes.params)
    model_state = jax.tree_util.tree_map_with_path(fill, shapes.model_state)
    return inference_model(config, params, model_state, 0, example.shape, str(example.dtype))

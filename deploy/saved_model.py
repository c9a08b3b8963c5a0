"""TF SavedModel through ``jax2tf.convert``: polymorphic batch, params as variables, one signature.

The params are ``tf.Variable``s (saved in the SavedModel's variables/, not folded into the graph);
the serving signature ``serving_default`` takes the model's named input with a ``None`` batch axis
and returns a dict of its named outputs. jax2tf embeds the computation as StableHLO in one
``XlaCallModule`` op, which is why ONNX comes from jax2onnx instead (see deploy/onnx_export.py).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from archlab.deploy.artifacts import atomic_path
from archlab.deploy.inference_model import InferenceModel

SIGNATURE = "serving_default"


def polymorphic_shape(model: InferenceModel) -> str:
    """jax2tf's shape spec for the input: a symbolic batch ``b``, the rest fixed."""
    return "(" + ", ".join(["b", *map(str, model.input_shape)]) + ")"


def export_saved_model(model: InferenceModel, path: str) -> str:
    """Converts ``model`` and writes a SavedModel directory at ``path`` (atomically); returns ``path``."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(model.apply, polymorphic_shapes=[None, polymorphic_shape(model)], with_gradient=False)
    module = tf.Module()
    module.params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), model.variables)
    spec = tf.TensorSpec((None, *model.input_shape), tf.dtypes.as_dtype(model.input_dtype), name=model.input_name)

    @tf.function(input_signature=[spec], autograph=False)
    def serve(x):
        outputs = converted(module.params, x)
        return {name: y for name, y in zip(model.output_names, outputs)}

    module.serve = serve
    with atomic_path(path, directory=True) as tmp:
        tf.saved_model.save(module, tmp, signatures={SIGNATURE: serve})
    return path


def saved_model_runner(model: InferenceModel, path: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """Reloads the SavedModel with ``tf.saved_model.load``: ``x -> [outputs as numpy]`` via its signature."""
    import tensorflow as tf

    signature = tf.saved_model.load(os.fspath(path)).signatures[SIGNATURE]

    def run(x):
        outputs = signature(**{model.input_name: tf.constant(x)})
        return [outputs[name].numpy() for name in model.output_names]

    return run

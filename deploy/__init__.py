"""How a trained model ships: jax2tf SavedModel, ONNX (jax2onnx), TensorRT engines, parity, latency.

Library code only: nothing here parses argv or exits the process (``launch/export.py`` does).
"""

from archlab import short_names  # noqa: E402

short_names.alias(__name__)  # imported as ``deploy``: become ``archlab.deploy`` (archlab/short_names.py)


class ExportError(RuntimeError):
    """An export that cannot be done as asked: no checkpoint, an unconvertible primitive, bad options."""


class ParityError(ExportError):
    """An exported artifact whose outputs differ from JAX's by more than its tolerance."""

"""How a model learns: config, data, tasks, state, steps, parallelism, checkpoints, the loop."""

from archlab import short_names  # noqa: E402

short_names.alias(__name__)  # imported as ``train``: become ``archlab.train`` (archlab/short_names.py)

from archlab.train import host_memory

# Before JAX starts its backend: XLA:CPU's per-step buffers reuse freed pages (train/host_memory.py).
host_memory.apply_policy()

"""How a model learns: config, data, tasks, state, steps, parallelism, checkpoints, the loop."""

from train import host_memory

# Before JAX starts its backend: XLA:CPU's per-step buffers reuse freed pages (train/host_memory.py).
host_memory.apply_policy()

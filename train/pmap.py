"""``parallel.mode=pmap``: the legacy data-parallel mode, with the operations of ``train.jit_mode.JitMode``.

The state is replicated and stacked on the local devices, each process-local batch is split per
device, and the train step is ``jax.pmap`` with a ``lax.pmean`` of the gradients. Checkpoints,
evaluation and plots see the same global, replicated state as jit mode (``to_global``), so a run
can switch modes across a resume.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from archlab.train import parallel
from archlab.train.errors import MeshError


class PmapMode:
    """The pmap layout: state stacked on the local devices, batch split per device."""

    axis_name = "data"

    def __init__(self, mesh, rules, parallel_config):
        """``rules`` is replaced: pmap splits the batch over ``data`` and nothing else."""
        if set(parallel.mesh_shape(mesh)) != {"data"}:
            raise MeshError(f"parallel.mode=pmap is data parallel only: use a data-only mesh such as data:-1 (got {parallel_config.mesh})")
        self.mesh = mesh
        self.rules = (("batch", "data"),)
        self.local_devices = jax.local_devices()
        self.count = len(self.local_devices)

    def describe(self) -> str:
        return "pmap (legacy data parallel: replicated params, pmean of gradients)"

    def cross_replica_mean(self):
        """The train step's gradient and metric average over the devices."""
        return lambda tree: jax.lax.pmean(tree, self.axis_name)

    def state_shardings(self, boxed_state, notes: list[str]):
        """Everything replicated; checkpoints hold the same global replicated arrays as jit mode."""
        return jax.tree.map(lambda _: parallel.replicated(self.mesh), nn.meta.unbox(boxed_state))

    def wrap_train_step(self, step_fn, state_shardings, batch_sharding):
        return jax.pmap(step_fn, axis_name=self.axis_name, devices=self.local_devices, donate_argnums=0)

    def compile(self, wrapped_step, abstract_state, global_batch):
        """pmap compiles at its first call."""
        return wrapped_step

    def to_layout(self, global_state):
        """Global replicated state -> one copy stacked per local device."""
        stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x.addressable_data(0)), (self.count,) + x.shape), global_state)
        return jax.pmap(lambda t: t, devices=self.local_devices)(stacked)

    def to_global(self, stacked):
        """Stacked per-device copies -> global replicated arrays over the same device buffers."""
        sharding = parallel.replicated(self.mesh)

        def unstack(x):
            per_device = [shard.data.reshape(x.shape[1:]) for shard in x.addressable_shards]
            return jax.make_array_from_single_device_arrays(x.shape[1:], sharding, per_device)

        return jax.tree.map(unstack, stacked)

    def place_batch(self, host_batch: dict, batch_sharding: dict) -> dict:
        """This process's rows -> [local devices, rows per device, ...] (``batch_sharding`` unused)."""
        def split(x):
            if x.shape[0] % self.count:
                raise MeshError(f"a process-local batch of {x.shape[0]} rows does not split over {self.count} local devices")
            return x.reshape((self.count, x.shape[0] // self.count) + x.shape[1:])

        return jax.tree.map(split, host_batch)

    def host_metrics(self, metrics) -> dict:
        """Per-device values (identical after pmean) -> one host copy."""
        first = jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(metrics))
        return {k: float(v) for k, v in first.items()}

"""``parallel.mode=jit``: the train step as one ``jax.jit`` program over the named mesh.

State and batches are global arrays sharded by the logical-axis rules (``train.parallel``); the
step takes and returns them with explicit in/out shardings and donates the old state.
``train.pmap.PmapMode`` offers the same operations for the legacy pmap mode, so the run
(``train.compiled_run``) and the loop never ask which mode is on.
"""

from __future__ import annotations

import jax
import numpy as np

from archlab.train import parallel


class JitMode:
    """The jit layout: the global (checkpoint) layout is the train step's own, so the conversions
    are the identity."""

    def __init__(self, mesh, rules, parallel_config):
        self.mesh, self.rules = mesh, rules
        self._rules_spec = parallel_config.rules

    def describe(self) -> str:
        return f"jit, rules {self._rules_spec}"

    def cross_replica_mean(self):
        """Nothing to average: the gradients of the global batch are already global."""
        return None

    def state_shardings(self, boxed_state, notes: list[str]):
        """The state's shardings from its logical axis names (indivisible dims noted and replicated)."""
        return parallel.logical_shardings(boxed_state, self.mesh, self.rules, notes)

    def wrap_train_step(self, step_fn, state_shardings, batch_sharding):
        return jax.jit(
            step_fn,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, parallel.replicated(self.mesh)),
            donate_argnums=0,
        )

    def compile(self, wrapped_step, abstract_state, global_batch):
        """Ahead of time: one compile, the memory known before the loop."""
        with parallel.mesh_context(self.mesh, self.rules):
            return wrapped_step.lower(abstract_state, global_batch).compile()

    def to_layout(self, global_state):
        return global_state

    def to_global(self, state):
        return state

    def place_batch(self, host_batch: dict, batch_sharding: dict) -> dict:
        return jax.tree.map(parallel.put_batch, host_batch, batch_sharding)

    def host_metrics(self, metrics) -> dict:
        return {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}

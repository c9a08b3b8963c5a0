"""The train and eval steps: pure functions of (state, batch, rng), jitted by the caller.

``make_train_step`` closes over the module, task and optimizer (keyword-only, so it is testable
on its own). A step whose loss or gradient norm is not finite leaves params and optimizer state
unchanged and records its number in ``state.nonfinite_step``; the loop reads that flag only at
logging/checkpoint time (no per-step host sync), and there also checks the state itself (a NaN
learning rate or weight decay makes NaN params from a finite loss and gradient), stops, and never
writes a NaN checkpoint. Checking the new state inside the step would cost a pass over it every
step (measured: ~4 % of the main job's wall time); at log points it costs one pass per log_every.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from archlab.train.optim.loss_scale import find_scale, scaled_value_and_grad
from archlab.train.optim.optimizers import ema_update
from archlab.train.state import TrainState
from archlab.train.tasks import Task


def _split_micro_batches(batch, num_micro: int):
    # Micro-batch i takes rows i, i+A, i+2A...: each data shard contributes equally to each one.
    def split(x):
        return x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def make_train_step(*, module, task: Task, tx: optax.GradientTransformation, grad_accum_steps: int = 1,
                    lr_schedule: Callable | None = None, cross_replica_mean: Callable | None = None,
                    regularizer: Callable | None = None, augment: Callable | None = None, ema_decay: float = 0.0):
    """Returns ``train_step(state, batch, rng) -> (state, metrics)``; rng is this step's key.

    ``regularizer(params) -> scalar`` (train/regularize.py) is added to the loss that is
    differentiated and reported as the ``penalty`` metric (``loss`` stays the data loss).
    ``augment(batch, rng) -> batch`` (train/augment.py) transforms the batch first, from this
    step's rng, so augmentation is deterministic and needs no host randomness.
    ``ema_decay`` > 0 moves ``state.ema_params`` toward the updated params (train/optim/optimizers.py).

    ``cross_replica_mean`` (pmap mode: ``lax.pmean`` over the device axis) averages gradients,
    metrics and batch statistics across replicas before the update; under jit the step already sees
    the global batch, so it is None.
    """
    sync = cross_replica_mean or (lambda tree: tree)

    def loss_and_grad(params, model_state, batch, rng, scale=None):
        def loss_of(p):
            loss, (metrics, new_model_state) = task.loss_fn(module, p, model_state, batch, rng, True)
            if regularizer is not None:
                penalty = regularizer(p)
                loss, metrics = loss + penalty, dict(metrics, penalty=penalty)
            return loss, (metrics, new_model_state)

        (loss, (metrics, new_model_state)), grads = scaled_value_and_grad(loss_of, scale)(params)
        return loss, metrics, new_model_state, grads

    def train_step(state: TrainState, batch, rng: jax.Array):
        if augment is not None:
            batch = augment(batch, jax.random.fold_in(rng, 0x61756775))  # a stream apart from dropout's
        scale = find_scale(state.opt_state)  # float16: the dynamic loss scale (train/optim/loss_scale.py), else None
        if grad_accum_steps == 1:
            loss, metrics, model_state, grads = loss_and_grad(state.params, state.model_state, batch, rng, scale)
        else:
            micro_batches = _split_micro_batches(batch, grad_accum_steps)

            def accumulate(carry, xs):
                grads_sum, model_state = carry
                micro, index = xs
                _, metrics, model_state, grads = loss_and_grad(state.params, model_state, micro, jax.random.fold_in(rng, index), scale)
                return (jax.tree.map(jnp.add, grads_sum, grads), model_state), metrics

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (grads_sum, model_state), metrics = jax.lax.scan(
                accumulate, (zeros, state.model_state), (micro_batches, jnp.arange(grad_accum_steps))
            )
            grads = jax.tree.map(lambda g: g / grad_accum_steps, grads_sum)
            metrics = jax.tree.map(jnp.mean, metrics)
            loss = metrics["loss"]

        grads, metrics, model_state, loss = sync((grads, metrics, model_state, loss))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        # Under loss scaling an overflowed gradient is expected: the scaler skips the update and halves the scale.
        finite = jnp.isfinite(loss) & (jnp.isfinite(grad_norm) | (scale is not None))

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            model_state=keep_if_finite(model_state, state.model_state),
            nonfinite_step=jnp.where((state.nonfinite_step < 0) & ~finite, state.step, state.nonfinite_step),
        )
        if state.ema_params is not None:
            new_state = new_state.replace(ema_params=ema_update(state.ema_params, new_state.params, ema_decay))
        metrics = dict(metrics, grad_norm=grad_norm)
        if scale is not None:
            overflow = ~jnp.isfinite(grad_norm)
            metrics.update(grad_norm=jnp.where(overflow, 0.0, grad_norm), loss_scale=scale, overflow=overflow.astype(jnp.float32))
        if lr_schedule is not None:
            metrics["learning_rate"] = lr_schedule(state.step)
        return new_state, metrics

    return train_step


def make_eval_step(*, module, task: Task):
    """Returns ``eval_step(params, model_state, batch, weights) -> sums`` (see Task.eval_sums)."""
    def eval_step(params, model_state, batch, weights):
        return task.eval_sums(module, params, model_state, batch, weights)

    return eval_step

"""Language modelling: next-token cross-entropy; bits per byte (or token) and accuracy.

language modelling: batch is int tokens [B, T+1]; predict tokens[:, 1:] from tokens[:, :-1].
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from archlab.train.tasks.base import LN2, Task


def _lm_loss(module, params, model_state, batch, rng, train: bool):
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    logits = module.apply(
        {"params": params, **model_state},
        inputs,
        deterministic=not train,
        rngs={"dropout": rng} if train else None,
    )
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    loss = jnp.mean(token_loss)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == targets)
    metrics = {"loss": loss, "bits_per_byte": loss / LN2, "accuracy": accuracy}
    return loss, (metrics, model_state)


def _lm_eval_sums(module, params, model_state, batch, weights):
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
    logits = module.apply({"params": params, **model_state}, inputs, deterministic=True)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    w = weights[:, None].astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(token_loss * w),
        "correct_sum": jnp.sum((jnp.argmax(logits, -1) == targets) * w),
        "count": jnp.sum(w) * targets.shape[1],
    }


def _lm_summarize(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    loss = float(sums["loss_sum"]) / count
    return {"loss": loss, "bits_per_byte": loss / LN2, "accuracy": float(sums["correct_sum"]) / count}


def _lm_report(metrics: dict) -> str:
    return f"loss {metrics['loss']:.4f} nats = {metrics['bits_per_byte']:.3f} bits per byte (accuracy {metrics['accuracy']:.3f})"


LM = Task("lm", _lm_loss, _lm_eval_sums, _lm_summarize, _lm_report)

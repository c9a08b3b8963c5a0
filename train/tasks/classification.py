"""Classification: softmax cross-entropy and accuracy; BatchNorm statistics update in training only.

classification: batch is {"inputs": [B, ...], "labels": int [B]}. Mutable collections (BatchNorm's batch_stats) update in training and are read frozen in evaluation.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from archlab.train.tasks.base import Task


def apply_classifier(module, params, model_state, inputs, rng, train: bool):
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if train else None
    if train and model_state:
        logits, updates = module.apply(variables, inputs, deterministic=False, rngs=rngs, mutable=list(model_state))
        return logits, dict(updates)
    return module.apply(variables, inputs, deterministic=not train, rngs=rngs), model_state


def _classification_loss(module, params, model_state, batch, rng, train: bool):
    logits, new_model_state = apply_classifier(module, params, model_state, batch["inputs"], rng, train)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
    return loss, ({"loss": loss, "accuracy": accuracy}, new_model_state)


def _classification_eval_sums(module, params, model_state, batch, weights):
    logits, _ = apply_classifier(module, params, model_state, batch["inputs"], None, False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    return {
        "loss_sum": jnp.sum(loss * weights),
        "correct_sum": jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * weights),
        "count": jnp.sum(weights),
    }


def _classification_summarize(sums: dict) -> dict:
    count = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct_sum"]) / count}


def _classification_report(metrics: dict) -> str:
    return f"accuracy {100 * metrics['accuracy']:.2f} % (loss {metrics['loss']:.4f})"


CLASSIFICATION = Task(
    "classification", _classification_loss, _classification_eval_sums, _classification_summarize, _classification_report
)

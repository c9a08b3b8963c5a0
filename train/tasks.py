"""Loss and metrics per task. A task tells the generic train/eval steps what to optimise.

``loss_fn(module, params, model_state, batch, rng, train) -> (loss, (metrics, new_model_state))``
is differentiated by the train step. ``eval_sums`` returns per-batch *sums* weighted by a
per-example mask so padded evaluation batches and sharded evaluation add up exactly;
``summarize`` turns accumulated sums into the reported metrics. Tasks live here, not per model:
a registry entry names its task, and a new family reuses one or extends this file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    loss_fn: Callable[..., Any]
    eval_sums: Callable[..., dict]
    summarize: Callable[[dict], dict]
    report: Callable[[dict], str]  # one human line for the final evaluation
    # Optional: plot(module, params, model_state, dataset, plot_dir, step) -> [paths], called at
    # every evaluation and at the end (e.g. GAN sample grids, NeRF views next to ground truth).
    plot: Callable[..., list] | None = None


# --- language modelling: batch is int tokens [B, T+1]; predict tokens[:, 1:] from tokens[:, :-1].


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


# --- classification: batch is {"inputs": [B, ...], "labels": int [B]}. Mutable collections
# (BatchNorm's batch_stats) update in training and are read frozen in evaluation.


def _apply_classifier(module, params, model_state, inputs, rng, train: bool):
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if train else None
    if train and model_state:
        logits, updates = module.apply(variables, inputs, deterministic=False, rngs=rngs, mutable=list(model_state))
        return logits, dict(updates)
    return module.apply(variables, inputs, deterministic=not train, rngs=rngs), model_state


def _classification_loss(module, params, model_state, batch, rng, train: bool):
    logits, new_model_state = _apply_classifier(module, params, model_state, batch["inputs"], rng, train)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]))
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["labels"])
    return loss, ({"loss": loss, "accuracy": accuracy}, new_model_state)


def _classification_eval_sums(module, params, model_state, batch, weights):
    logits, _ = _apply_classifier(module, params, model_state, batch["inputs"], None, False)
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

TASKS: dict[str, Task] = {"lm": LM, "classification": CLASSIFICATION}


def get_task(name: str) -> Task:
    return TASKS[name]

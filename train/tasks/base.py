"""What a task is: the loss, evaluation sums, summary and report the generic train/eval steps call (and ``LN2``
for bits).

``loss_fn(module, params, model_state, batch, rng, train) -> (loss, (metrics, new_model_state))``
is differentiated by the train step. ``eval_sums`` returns per-batch *sums* weighted by a
per-example mask so padded evaluation batches and sharded evaluation add up exactly;
``summarize`` turns accumulated sums into the reported metrics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

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

"""What the loop needs from a task's data."""

from __future__ import annotations

import dataclasses

import numpy as np

from archlab.train.data.pipeline import EvalBatches, TrainStream


@dataclasses.dataclass
class Dataset:
    """A checkpointable training stream, the held-out split as padded batches (and a test split
    when that one is a validation split), an example input for init, and a description for the
    log. ``extras`` carries what a task's plots need (e.g. held-out views, fixed latents)."""

    train: TrainStream
    eval_batches: EvalBatches
    example_input: np.ndarray
    source: str
    description: str
    num_classes: int = 0
    held_out_name: str = "validation"  # what the evaluation split is called in the log
    # The test split when ``eval_batches`` is a validation split (data.validation_examples): scored
    # once, at the end of training, on the state early stopping kept (else the last one).
    test_batches: EvalBatches | None = None
    extras: dict = dataclasses.field(default_factory=dict)

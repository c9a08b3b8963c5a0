"""Recurrent models: byte-level LMs (``--model=lstm|gru|rnn``) and topic classifiers
(``--model=lstm_classifier|gru_classifier|rnn_classifier``).

Args: the model name, ``lstm`` by default.
"""

from __future__ import annotations

import ml_collections

from archlab.configs.base import PRECISION, base_config, choose

ARGS = ("lstm", "gru", "rnn", "lstm_classifier", "gru_classifier", "rnn_classifier")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    model_name = choose(arg, ARGS)
    c = base_config()
    c.model_name = model_name
    if model_name.endswith("_classifier"):
        _classifier(c)
    else:
        _language_model(c)
    c.model.kind = model_name.removesuffix("_classifier")  # the cell: lstm, gru or rnn
    return c


def _language_model(c: ml_collections.ConfigDict) -> None:
    # max_len only bounds the prompt the sampler feeds; the recurrent state has no context limit.
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=256, embed_dim=64, hidden=512, num_layers=1, dropout_rate=0.0, max_len=128, **PRECISION))
    c.train.steps = 450
    c.train.batch_size = 32
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 30
    c.train.weight_decay = 0.0
    c.train.log_every = 25
    c.train.eval_every = 150
    c.checkpoint.every = 150
    c.checkpoint.keep = 3


def _classifier(c: ml_collections.ConfigDict) -> None:
    """Which topic of the embedded corpus a 128-byte window comes from."""
    c.model = ml_collections.ConfigDict(dict(
        num_classes=8, vocab_size=256, embed_dim=64, hidden=256, num_layers=1, dropout_rate=0.1, **PRECISION))
    c.data.dataset = "topics"
    c.data.seq_len = 128
    c.data.val_fraction = 0.2
    c.train.steps = 600
    c.train.batch_size = 32
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 30
    c.train.weight_decay = 1e-4
    c.train.log_every = 25
    c.train.eval_every = 200
    c.checkpoint.every = 200
    c.checkpoint.keep = 2

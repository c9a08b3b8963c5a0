"""Decoder-only Transformer LM (``--model=transformer``).

Args: ``small`` (default; the README's main job: bytes of the embedded corpus, under 10 minutes on
a 2-core CPU) and ``gpt2_124m`` (GPT-2 small on a sentencepiece-tokenized corpus you supply).
"""

from __future__ import annotations

import ml_collections

from archlab.configs.base import base_config, choose

ARGS = ("small", "gpt2_124m")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = choose(arg, ARGS)
    c = base_config()
    c.model_name = "transformer"
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=256,
        num_layers=4,
        d_model=128,
        num_heads=4,
        mlp_dim=512,
        max_len=128,
        dropout_rate=0.0,
        positional="rotary",
        tie_embeddings=True,
        scan_layers=False,
        remat=False,
        dtype="float32",
        param_dtype="float32",
    ))
    # Tuned to finish in under 10 minutes on a 2-core CPU: at ~55-70 GFLOP/s a d_model-128
    # model seeing more tokens beat d_model 192/256 at equal time, and batch 16 beat 32.
    c.train.steps = 1200
    c.train.batch_size = 16
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.1
    c.train.log_every = 50
    c.train.eval_every = 200
    c.checkpoint.every = 200
    c.checkpoint.keep = 3
    if preset == "gpt2_124m":
        _gpt2_124m(c)
    return c


def _gpt2_124m(c: ml_collections.ConfigDict) -> None:
    """GPT-2 small (Radford et al. 2019): 12 layers, 12 heads, d_model 768, learned positions,
    tied embeddings, context 1024; ~124 M params. Vocab 50304 is GPT-2's 50257 rounded up to a
    multiple of 64 (nanoGPT), for a sentencepiece model of up to that many pieces. Optimizer as
    llm.c's 10 B-token run: 524,288 tokens per step (512 x 1024), 19,073 steps."""
    m = c.model
    m.vocab_size = 50304
    m.num_layers = 12
    m.d_model = 768
    m.num_heads = 12
    m.mlp_dim = 3072
    m.max_len = 1024
    m.dropout_rate = 0.0
    m.positional = "learned"
    m.tie_embeddings = True
    m.dtype = "bfloat16"  # compute; params stay float32
    c.data.path = ""  # give your corpus: --config.data.path=...
    c.data.seq_len = 1024
    c.data.tokenizer = "sentencepiece"  # and --config.data.tokenizer_model=... (python -m launch.tokenizer)
    t = c.train
    t.steps = 19073
    t.batch_size = 512
    t.grad_accum_steps = 16  # micro-batches of 32 x 1024 tokens
    t.learning_rate = 6e-4
    t.min_lr_ratio = 0.1
    t.warmup_steps = 700
    t.weight_decay = 0.1
    t.b1 = 0.9
    t.b2 = 0.95
    t.grad_clip = 1.0
    t.log_every = 10
    t.eval_every = 250
    t.eval_batches = 20
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3

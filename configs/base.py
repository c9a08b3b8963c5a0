"""The base config every family file in configs/ starts from, and the arg check they share.

Field names here are a contract other tools use: ``train.steps``, ``train.batch_size``,
``train.learning_rate``, ``model.num_layers``, ``data.path``, ``checkpoint.every``, ``checkpoint.keep``.
This package imports nothing of archlab but itself, so the registry (arch/) and the trainer (train/)
can both read it.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads, at the values a family file starts from (model section empty)."""
    c = ml_collections.ConfigDict()
    c.model_name = ""
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.dataset = ""  # empty: the family's default; see train.data.DATASETS for each task's choices
    c.data.path = ""  # a file (or directory) to train on instead of the embedded/generated default
    c.data.seq_len = 128  # language models: bytes per training window
    c.data.image_size = 0  # image models: resize to this many pixels square (0 = native size)
    c.data.val_fraction = 0.1  # for a user text file: the tail fraction held out
    c.data.classes = ""  # images: keep only these labels ("0-4", "5,7,9"), relabelled 0..k-1; sets model.num_classes=k
    # Image data (classification, dehaze, GAN digits): train on only the first N images of the
    # shuffled, fixed train split (the test split unchanged); 0 = all.
    c.data.train_examples = 0
    # Image classification: the last N images of the train split become a validation split that the
    # periodic evaluations and early stopping read; the test split is then scored once, at the end.
    c.data.validation_examples = 0
    # Where data.path points and how it is read (train/data/): auto picks by name/contents; or one of
    # text, tokens (a .bin memmap of token ids), npz, cifar10, tfrecord, array_record, image_folder.
    c.data.format = "auto"
    c.data.tokenizer = "bytes"  # language models: bytes (vocab 256) or sentencepiece (data.tokenizer_model)
    c.data.tokenizer_model = ""  # a sentencepiece .model file (python -m launch.tokenizer writes one)
    c.data.token_dtype = "uint16"  # data.format=tokens: the .bin file's integer type, uint16 or uint32
    # Image sources: per-channel mean/std normalisation measured on the training split. auto: on for
    # files (CIFAR-10, records, image folders, .npz), off for the embedded digits.
    c.data.normalize = "auto"
    c.data.workers = 0  # grain worker processes reading/decoding records (0: in the training process)
    c.data.prefetch = 2  # batches read ahead of the train step (grain read threads)

    c.model = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.batch_size = 32
    c.train.learning_rate = 1e-3
    c.train.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
    c.train.warmup_steps = 100
    c.train.weight_decay = 0.1
    c.train.b1 = 0.9
    c.train.b2 = 0.99
    c.train.optimizer = "adamw"  # adamw, sgd, momentum (b1), adagrad, lion (b1, b2), adafactor (train/optim/optimizers.py)
    c.train.schedule = "cosine"  # after warmup: cosine, linear (both to learning_rate * min_lr_ratio), constant, rsqrt
    c.train.ema_decay = 0.0  # in (0, 1): keep an EMA of the params, used for evaluation, sampling and export; 0 disables
    c.train.grad_clip = 1.0  # global-norm clip; 0 disables
    c.train.group_learning_rates = ""  # models with param groups (gan): "generator:2e-4,discriminator:2e-4"
    c.train.grad_accum_steps = 1  # micro-batches per optimizer update (batch_size must divide)
    # Loss scaling (train/optim/loss_scale.py): auto becomes dynamic for model.dtype=float16, none otherwise.
    c.train.loss_scaling = "auto"
    c.train.log_every = 50
    c.train.profile_steps = ""  # "START:COUNT": a jax.profiler trace of COUNT steps after START into WORKDIR/tensorboard
    c.train.eval_every = 500
    c.train.eval_batches = 0  # 0: the whole validation split at every evaluation
    # Pruning (train/optim/prune.py): global magnitude, cubic ramp from prune_start to prune_end (0: 3/4 of steps).
    c.train.sparsity = 0.0  # target fraction of Dense/Conv kernel weights set to zero; 0 disables
    c.train.prune_start = 0
    c.train.prune_end = 0
    c.train.prune_every = 10  # steps between mask updates during the ramp
    # Regularisation (train/regularize.py, train/augment.py) and early stopping (train/early_stopping.py).
    c.train.l1 = 0.0  # penalty l1 * sum|w| on kernels, added to the loss
    c.train.l2 = 0.0  # penalty l2 * sum w^2 on kernels (coupled, unlike AdamW's weight_decay)
    c.train.augment = "none"  # images: none, shift, flip, shift_flip (in the jitted step, from the step rng)
    c.train.augment_pad = 2  # shift: up to this many pixels each way
    c.train.early_stopping_metric = ""  # an eval metric (accuracy, loss, ...); empty disables
    c.train.early_stopping_mode = "auto"  # auto (min for losses, max otherwise), min, max
    c.train.early_stopping_min_delta = 0.0
    c.train.patience = 3  # evaluations without improvement before stopping
    # Distillation (train/distill.py): a trained classifier's workdir; loss alpha*hard + (1-alpha)*T^2*soft.
    c.train.teacher = ""
    c.train.distill_alpha = 0.5
    c.train.distill_temperature = 4.0
    # Transfer (train/transfer.py): start from a trained run's params (head re-initialised if classes differ).
    c.train.init_from = ""
    c.train.freeze_backbone = False  # train only the "head" module (optax.multi_transform + set_to_zero)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.keep = 3

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = "jit"  # jit: jax.jit + NamedSharding on the mesh; pmap: legacy data parallel (jax.pmap + pmean)
    # Named mesh "axis:size,..." over axes data, fsdp, model; one -1 means "the rest".
    c.parallel.mesh = "data:-1"
    c.parallel.num_devices = 0  # 0: every device; N: the mesh uses the first N (single-process only)
    # Logical axis -> mesh axes: a preset (default, data_parallel, fsdp, tensor_parallel; see
    # train.parallel.RULE_SETS) or "logical:axis[+axis],..."; unlisted logical axes are replicated.
    c.parallel.rules = "default"
    # Multi-host: auto (initialize when SLURM / Open MPI / Cloud TPU / JAX_COORDINATOR_ADDRESS say
    # there are several processes), off, or explicit (--coordinator, --num_processes, --process_id).
    c.parallel.distributed = "auto"
    c.parallel.heartbeat_timeout_s = 30  # a process silent this long stops the job (jax.distributed; its default is 100)
    c.parallel.initialization_timeout_s = 120  # multi-host start-up: give up this long after a peer fails to join
    c.parallel.replicated_warn_size = 65536  # warn when a param this large is replicated on a model/fsdp mesh

    c.sample = ml_collections.ConfigDict()
    c.sample.prompt = "The "
    c.sample.length = 200
    c.sample.temperature = 0.8
    c.sample.top_k = 0
    c.sample.top_p = 0.0  # nucleus sampling: the smallest set of tokens holding this probability; 0 or 1 = off
    return c


PRECISION = dict(dtype="float32", param_dtype="float32")  # model.dtype (compute) and model.param_dtype


def choose(arg: str | None, valid: tuple[str, ...]) -> str | None:
    """``arg``, or ``valid[0]`` when it is None or empty; a ValueError naming ``valid`` for any other.
    A file with no args (``valid`` empty) takes none."""
    if not arg:
        return valid[0] if valid else None
    if arg not in valid:
        raise ValueError(f"unknown arg {arg!r}; valid: {', '.join(valid)}" if valid else f"unknown arg {arg!r}: this file takes no arg")
    return arg

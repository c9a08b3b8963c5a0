"""Run configuration: the base ml_collections config, per-family defaults, and overrides.

``get_config(model)`` returns a complete, locked config; ``apply_overrides`` takes the
``--config.SECTION.FIELD=VALUE`` strings of the CLI and rejects unknown keys and badly typed
values with one line naming the valid choices. Field names here are a contract other tools use:
``train.steps``, ``train.batch_size``, ``train.learning_rate``, ``model.num_layers``,
``data.path``, ``checkpoint.every``, ``checkpoint.keep``.
"""

from __future__ import annotations

import math

import ml_collections

from arch import get_model_spec


class ConfigError(ValueError):
    """A bad config key or value given by the user."""


def base_config() -> ml_collections.ConfigDict:
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
    c.train.grad_clip = 1.0  # global-norm clip; 0 disables
    c.train.group_learning_rates = ""  # models with param groups (gan): "generator:2e-4,discriminator:2e-4"
    c.train.grad_accum_steps = 1  # micro-batches per optimizer update (batch_size must divide)
    # Loss scaling (train/loss_scale.py): auto becomes dynamic for model.dtype=float16, none otherwise.
    c.train.loss_scaling = "auto"
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.eval_batches = 0  # 0: the whole validation split at every evaluation
    # Pruning (train/prune.py): global magnitude, cubic ramp from prune_start to prune_end (0: 3/4 of steps).
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
    return c


# Per-family changes to the base train/data sections (the model section comes from the registry).
_FAMILY_DEFAULTS: dict[str, dict[str, dict]] = {
    "transformer": {
        # Tuned to finish in under 10 minutes on a 2-core CPU: at ~55-70 GFLOP/s a d_model-128
        # model seeing more tokens beat d_model 192/256 at equal time, and batch 16 beat 32.
        "train": dict(
            steps=1200,
            batch_size=16,
            learning_rate=3e-3,
            warmup_steps=100,
            weight_decay=0.1,
            log_every=50,
            eval_every=200,
        ),
        "checkpoint": dict(every=200, keep=3),
    },
    **{
        kind: {
            "train": dict(steps=450, batch_size=32, learning_rate=3e-3, warmup_steps=30, weight_decay=0.0, log_every=25, eval_every=150),
            "checkpoint": dict(every=150, keep=3),
        }
        for kind in ("lstm", "gru", "rnn")
    },
    **{
        f"{kind}_classifier": {
            "data": dict(dataset="topics", seq_len=128, val_fraction=0.2),
            "train": dict(steps=600, batch_size=32, learning_rate=3e-3, warmup_steps=30, weight_decay=1e-4, log_every=25, eval_every=200),
            "checkpoint": dict(every=200, keep=2),
        }
        for kind in ("lstm", "gru", "rnn")
    },
    "mlp": {
        "data": dict(val_fraction=0.2),
        "train": dict(steps=1500, batch_size=64, learning_rate=1e-3, warmup_steps=50, weight_decay=1e-4, log_every=50, eval_every=250),
        "checkpoint": dict(every=500, keep=2),
    },
    **{
        f"resnet{depth}": {
            "data": dict(val_fraction=0.2, image_size=32),
            "train": dict(steps=600, batch_size=64, learning_rate=2e-3, warmup_steps=50, weight_decay=5e-4, log_every=25, eval_every=100),
            "checkpoint": dict(every=100, keep=2),
        }
        for depth in (18, 34, 50)
    },
    "gan": {
        # Points: generated fresh every step; images: data.dataset=digits (8x8 native, image_size to resize).
        "data": dict(eval_samples=2048, val_fraction=0.2),
        "train": dict(steps=10000, batch_size=128, learning_rate=3e-3, warmup_steps=50, weight_decay=0.0, b1=0.5, b2=0.99,
                      grad_clip=0.0, min_lr_ratio=0.05, log_every=100, eval_every=1000),
        "checkpoint": dict(every=1000, keep=2),
    },
    "nerf": {
        # Random rays of 64 training views at 32x32 (data.image_size is the render resolution). Measured on
        # held-out views: lr 1e-2 beat 5e-3 and 2e-2; at equal rays seen, batch 256 beat 512.
        "data": dict(image_size=32),
        "train": dict(steps=2000, batch_size=256, learning_rate=1e-2, warmup_steps=50, weight_decay=0.0, log_every=50, eval_every=500),
        "checkpoint": dict(every=500, keep=2),
    },
    "inception": {
        "data": dict(val_fraction=0.2, image_size=16),
        "train": dict(steps=600, batch_size=64, learning_rate=2e-3, warmup_steps=50, weight_decay=5e-4, log_every=50, eval_every=200),
        "checkpoint": dict(every=200, keep=2),
    },
    "dehaze": {
        "data": dict(val_fraction=0.2, image_size=16),
        "train": dict(steps=1000, batch_size=32, learning_rate=2e-3, warmup_steps=50, weight_decay=0.0, log_every=50, eval_every=250),
        "checkpoint": dict(every=500, keep=2),
    },
    "nas_cell": {
        "data": dict(val_fraction=0.2, image_size=16),
        "train": dict(steps=1000, batch_size=64, learning_rate=1e-2, warmup_steps=50, weight_decay=0.0, log_every=50, eval_every=250),
        "checkpoint": dict(every=500, keep=2),
    },
    "cnn": {
        "data": dict(val_fraction=0.2, image_size=16),
        "train": dict(steps=1500, batch_size=64, learning_rate=1e-3, warmup_steps=50, weight_decay=1e-4, log_every=50, eval_every=250),
        "checkpoint": dict(every=500, keep=2),
    },
}


# (model, data.dataset) -> changes applied when the user picks that dataset (see apply_overrides).
_DATASET_DEFAULTS: dict[tuple[str, str], dict[str, dict]] = {
    ("gan", "digits"): {
        "data": dict(image_size=16, eval_samples=512),
        "model": dict(width=32, synthesis_layers=1, disc_width=32, disc_layers=2, r1_gamma=1.0),
        "train": dict(steps=3000, batch_size=64, learning_rate=2e-3, log_every=50, eval_every=500),
        "checkpoint": dict(every=500, keep=2),
    },
}


def get_config(model_name: str) -> ml_collections.ConfigDict:
    """The complete default config for ``--model=model_name`` (raises UnknownModelError)."""
    spec = get_model_spec(model_name)
    config = base_config()
    config.model_name = model_name
    config.model = ml_collections.ConfigDict(spec.model_defaults())
    for section, values in _FAMILY_DEFAULTS.get(model_name, {}).items():
        config[section].update(values)
    config.lock()
    return config


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _convert(key: str, raw: str, current):
    """Parses ``raw`` to the type of the current value of ``key``."""
    kind = type(current)
    try:
        if kind is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ConfigError(f"bad value for config.{key}: {raw!r} is not a finite number")
            return value
        if kind is str:
            return raw
        if kind is tuple:
            element = type(current[0]) if current else str
            return tuple(element(p.strip()) for p in raw.split(",") if p.strip())
    except ConfigError:
        raise
    except ValueError:
        pass
    raise ConfigError(f"bad value for config.{key}: {raw!r} is not a valid {kind.__name__}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Returns a copy of ``config`` with ``{"train.steps": "50", ...}`` applied, types checked.

    Choosing another ``data.dataset`` first applies that dataset's defaults for the family (e.g.
    the GAN's digits settings), then the user's overrides on top.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    dataset_defaults = _DATASET_DEFAULTS.get((config.model_name, overrides.get("data.dataset", "")), {})
    for section, values in dataset_defaults.items():
        config[section].update(values)
    for key, raw in overrides.items():
        node = config
        parts = key.split(".")
        for depth, part in enumerate(parts):
            is_last = depth == len(parts) - 1
            valid = sorted(node.keys())
            where = ".".join(parts[:depth]) or "the config"
            if part not in node:
                raise ConfigError(f"unknown config key config.{key}: no {part!r} in {where}; valid: {', '.join(valid)}")
            if is_last:
                if isinstance(node[part], ml_collections.ConfigDict):
                    raise ConfigError(f"config.{key} is a section, not a field; valid fields: {', '.join(sorted(node[part].keys()))}")
                node[part] = _convert(key, raw, node[part])
            else:
                if not isinstance(node[part], ml_collections.ConfigDict):
                    raise ConfigError(f"config.{'.'.join(parts[: depth + 1])} is a field, not a section")
                node = node[part]
    if config.data.classes and "num_classes" in config.model and "model.num_classes" not in overrides:
        from train.image_data import parse_classes

        try:  # a subset of k labels is relabelled 0..k-1: a k-way head unless the user says otherwise
            config.model.num_classes = len(parse_classes(config.data.classes))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if config.train.loss_scaling == "auto":  # resolved here so config.json and make_optimizer see the real choice
        config.train.loss_scaling = "dynamic" if config.model.get("dtype") == "float16" else "none"
    validate(config)
    config.lock()
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects values that parse but make no sense, naming the field and what is allowed."""
    t = config.train
    checks = [
        (t.steps >= 1, "train.steps must be >= 1"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.learning_rate > 0, "train.learning_rate must be > 0"),
        (t.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1"),
        (t.batch_size % max(t.grad_accum_steps, 1) == 0, "train.batch_size must be divisible by train.grad_accum_steps"),
        (t.log_every >= 1, "train.log_every must be >= 1"),
        (t.eval_every >= 1, "train.eval_every must be >= 1"),
        (config.checkpoint.every >= 1, "checkpoint.every must be >= 1"),
        (config.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
        (config.data.seq_len >= 2, "data.seq_len must be >= 2"),
        (0.0 < config.data.val_fraction < 1.0, "data.val_fraction must be in (0, 1)"),
        (config.data.image_size >= 0, "data.image_size must be >= 0"),
        (config.data.get("train_examples", 0) >= 0, "data.train_examples must be >= 0 (0 = every training image)"),
        (config.data.get("validation_examples", 0) >= 0, "data.validation_examples must be >= 0 (0 = no validation split)"),
        (config.parallel.mode in ("jit", "pmap"), f"parallel.mode must be jit or pmap (got {config.parallel.mode!r})"),
        (config.parallel.distributed in ("auto", "off", "explicit"),
         f"parallel.distributed must be auto, off or explicit (got {config.parallel.distributed!r})"),
        (config.parallel.num_devices >= 0, "parallel.num_devices must be >= 0 (0 means every device)"),
        (config.parallel.heartbeat_timeout_s >= 1, "parallel.heartbeat_timeout_s must be >= 1"),
        (config.parallel.initialization_timeout_s >= 1, "parallel.initialization_timeout_s must be >= 1"),
    ]
    from train.data import dataset_names

    datasets = dataset_names(get_model_spec(config.model_name).task) if config.model_name else ()
    if config.data.dataset and datasets:
        checks.append((config.data.dataset in datasets, f"data.dataset must be one of {', '.join(datasets)} for this model (got {config.data.dataset!r})"))
    if config.train.group_learning_rates and config.model_name:
        from train.state import parse_group_learning_rates

        try:
            parse_group_learning_rates(config.train.group_learning_rates, get_model_spec(config.model_name).param_groups)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if "max_len" in config.model:
        checks.append((config.data.seq_len <= config.model.max_len, "data.seq_len must be <= model.max_len"))
    if "dtype" in config.model:
        for field in ("dtype", "param_dtype"):
            value = config.model[field]
            checks.append((value in ("float32", "bfloat16", "float16"), f"model.{field} must be one of float32, bfloat16, float16 (got {value!r})"))
    checks.append((config.train.loss_scaling in ("auto", "dynamic", "none"),
                   f"train.loss_scaling must be auto, dynamic or none (got {config.train.loss_scaling!r})"))
    if "quant" in config.model:
        from arch.quant import QUANT_MODES

        checks.append((config.model.quant in QUANT_MODES, f"model.quant must be one of {', '.join(QUANT_MODES)} (got {config.model.quant!r})"))
    if "activation" in config.model:
        from arch.mlp import ACTIVATIONS

        checks.append((config.model.activation in ACTIVATIONS, f"model.activation must be one of {', '.join(ACTIVATIONS)} (got {config.model.activation!r})"))
    if "stem" in config.model:
        checks.append((config.model.stem in ("cifar", "imagenet"), f"model.stem must be 'cifar' or 'imagenet' (got {config.model.stem!r})"))
        checks.append((config.model.width >= 1, "model.width must be >= 1"))
    if "num_coarse" in config.model:  # nerf
        m = config.model
        checks += [
            (m.num_layers >= 1 and m.width >= 2, "model.num_layers must be >= 1 and model.width >= 2"),
            (m.pos_frequencies >= 0 and m.dir_frequencies >= 0, "model.pos_frequencies and model.dir_frequencies must be >= 0"),
            (m.num_coarse >= 2 and m.num_fine >= 1, "model.num_coarse must be >= 2 and model.num_fine >= 1"),
            (0.0 <= m.near < m.far, f"model.near and model.far must satisfy 0 <= near < far (got {m.near}, {m.far})"),
            (0.0 <= m.background <= 1.0, "model.background must be a grey level in [0, 1]"),
        ]
    if "branch_widths" in config.model:
        checks.append((len(config.model.branch_widths) == 6 and min(config.model.branch_widths) >= 1,
                       "model.branch_widths must be 6 widths >= 1 (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)"))
        checks.append((len(config.model.stages) >= 1 and min(config.model.stages, default=0) >= 1, "model.stages must be block counts >= 1"))
    if "t_min" in config.model:
        checks.append((0.0 < config.model.t_min < 1.0, "model.t_min must be in (0, 1)"))
        checks.append((len(config.model.dilations) >= 1 and min(config.model.dilations, default=0) >= 1, "model.dilations must be dilations >= 1"))
    if "genotype" in config.model:  # nas_cell
        from arch.search_space import GenotypeError, genotype_from_string

        try:
            genotype_from_string(config.model.genotype)
        except GenotypeError as e:
            raise ConfigError(f"bad model.genotype: {e}") from None
        checks.append((config.model.channels >= 1, "model.channels must be >= 1"))
        checks.append((config.data.image_size % 4 == 0, f"data.image_size must be divisible by 4 for this model, whose head pools to a 4x4 grid (got {config.data.image_size})"))
    if "num_classes" in config.model:
        checks.append((config.model.num_classes >= 2, "model.num_classes must be >= 2"))
    if config.data.classes:
        from train.image_data import parse_classes

        try:
            parse_classes(config.data.classes)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if "positional" in config.model:
        checks.append((config.model.positional in ("rotary", "learned"), f"model.positional must be 'rotary' or 'learned' (got {config.model.positional!r})"))
    if "num_heads" in config.model:
        checks.append((config.model.num_heads >= 1 and config.model.d_model % config.model.num_heads == 0, "model.d_model must be divisible by model.num_heads"))
    from train import augment, distill, early_stopping, prune, regularize

    for module in (prune, regularize, augment, early_stopping, distill):
        checks += [(False, message) for message in module.config_problems(config.train)]
    if "sample" in config:
        checks += sample_problems(config.sample)
        if config.model.get("positional") == "learned":
            prompt_len = min(len(config.sample.prompt.encode("utf-8", errors="surrogatepass")), config.model.max_len)
            checks.append((prompt_len + config.sample.length <= config.model.max_len,
                           f"sample.length={config.sample.length} plus the prompt's {prompt_len} bytes exceeds model.max_len="
                           f"{config.model.max_len}, the most a model with learned positions can generate"))
    checks += [(False, f"config.{key} must be a finite number (got {value})")
               for key, value in _leaves(config.to_dict()) if isinstance(value, float) and not math.isfinite(value)]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def sample_problems(s: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    """Checks of the ``sample`` section (the text drawn at the end of an LM run), so a bad value is
    refused before training rather than after it."""
    return [
        (s.length >= 1, f"sample.length must be >= 1 (got {s.length})"),
        (s.temperature >= 0, f"sample.temperature must be >= 0, 0 = greedy (got {s.temperature})"),
        (0 <= s.top_k <= 256, f"sample.top_k must be in [0, 256], 0 = all bytes (got {s.top_k})"),
        (_is_utf8(s.prompt), f"sample.prompt {s.prompt!r} is not valid UTF-8 text"),
    ]


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False

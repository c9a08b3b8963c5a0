"""ResNet-18/34/50 (``--model=resnet18|resnet34|resnet50``) and two named full-size runs.

Args: ``r18`` (default), ``r34``, ``r50``: today's ``--model`` defaults (width 16, digits at 32 px);
``cifar10_r18``: ResNet-18 at the paper's width on CIFAR-10 (pass
``--config.data.path=.../cifar-10-batches-py``); ``imagenet_r50``: ResNet-50 on an ImageNet-style
image folder (``--config.data.path=.../train``, one subdirectory per class).
"""

from __future__ import annotations

import ml_collections

from archlab.configs.base import PRECISION, base_config, choose

ARGS = ("r18", "r34", "r50", "cifar10_r18", "imagenet_r50")
_DEPTH = {"r18": 18, "r34": 34, "r50": 50, "cifar10_r18": 18, "imagenet_r50": 50}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = choose(arg, ARGS)
    c = base_config()
    c.model_name = f"resnet{_DEPTH[preset]}"
    c.model = ml_collections.ConfigDict(dict(depth=_DEPTH[preset], num_classes=10, width=16, stem="cifar", bn_momentum=0.9,
                                             quant="none", **PRECISION))
    c.data.val_fraction = 0.2
    c.data.image_size = 32
    c.train.steps = 600
    c.train.batch_size = 64
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 50
    c.train.weight_decay = 5e-4
    c.train.log_every = 25
    c.train.eval_every = 100
    c.checkpoint.every = 100
    c.checkpoint.keep = 2
    if preset == "cifar10_r18":
        _cifar10(c)
    elif preset == "imagenet_r50":
        _imagenet(c)
    return c


def _cifar10(c: ml_collections.ConfigDict) -> None:
    """ResNet-18 (width 64, 3x3 stem) on CIFAR-10's 50,000 images, 100 epochs of 391 steps. The
    optimizer here is AdamW with warmup + cosine (no SGD): lr 2e-3 and decoupled weight decay 5e-2
    stand in for the usual SGD 0.1 / 5e-4; pad-4 crop + flip is the standard CIFAR augmentation."""
    c.model.width = 64
    c.model.stem = "cifar"
    c.model.num_classes = 10
    c.data.format = "cifar10"
    c.data.path = ""  # --config.data.path=.../cifar-10-batches-py
    c.data.image_size = 32
    c.data.normalize = "auto"  # per-channel mean/std of the training split
    t = c.train
    t.steps = 39100
    t.batch_size = 128
    t.learning_rate = 2e-3
    t.warmup_steps = 782
    t.weight_decay = 5e-2
    t.b2 = 0.999
    t.augment = "shift_flip"
    t.augment_pad = 4
    t.log_every = 100
    t.eval_every = 1955  # every 5 epochs
    c.checkpoint.every = 1955
    c.checkpoint.keep = 3


def _imagenet(c: ml_collections.ConfigDict) -> None:
    """ResNet-50 (width 64, 7x7/2 stem + max-pool) on ImageNet-1k at 224 px: 90 epochs of 5,005
    steps at batch 256; AdamW + cosine as above. Only flips are available as augmentation here."""
    c.model.width = 64
    c.model.stem = "imagenet"
    c.model.num_classes = 1000
    c.data.format = "image_folder"
    c.data.path = ""  # --config.data.path=.../train (one subdirectory per class)
    c.data.image_size = 224
    c.data.normalize = "auto"
    t = c.train
    t.steps = 450450
    t.batch_size = 256
    t.learning_rate = 1e-3
    t.warmup_steps = 25025  # 5 epochs
    t.weight_decay = 5e-2
    t.b2 = 0.999
    t.augment = "flip"
    t.log_every = 100
    t.eval_every = 5005  # every epoch
    t.eval_batches = 0
    c.checkpoint.every = 5005
    c.checkpoint.keep = 3

"""Loss and metrics per task, one file each; this module is the registry a model's spec names
(``ModelSpec.task``): a new family reuses a task or adds one file and one line here."""

from __future__ import annotations

from archlab.train.tasks.base import Task
from archlab.train.tasks.classification import CLASSIFICATION
from archlab.train.tasks.gan import GAN
from archlab.train.tasks.lm import LM
from archlab.train.tasks.nerf import NERF
from archlab.train.tasks.restoration import RESTORATION

TASKS: dict[str, Task] = {"lm": LM, "classification": CLASSIFICATION, "gan": GAN, "nerf": NERF, "restoration": RESTORATION}


def get_task(name: str) -> Task:
    return TASKS[name]

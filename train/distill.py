"""Knowledge distillation (``train.teacher``): a trained classifier's logits as extra targets.

The teacher is any classification run's workdir: its config and latest checkpoint are restored
(``train.workdir.restore_params``), its variables are frozen constants of the student's jitted
train step, and its logits are computed in that same step on the same (augmented) batch. The
loss, with ``alpha = train.distill_alpha`` and ``T = train.distill_temperature``, is exactly

    alpha * CE(y, softmax(z_s / T)) + (1 - alpha) * T^2 * CE(softmax(z_t / T), softmax(z_s / T))

(T^2 keeps the soft term's gradient scale independent of T, as in Hinton et al. 2015). Evaluation
is the plain classification task, so a distilled run's test accuracy compares directly with an
undistilled one's.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archlab.arch import UnknownModelError, get_model_spec
from archlab.train.checkpoint import CheckpointError
from archlab.train.errors import TeacherError
from archlab.train.tasks import Task
from archlab.train.tasks.classification import apply_classifier
from archlab.train.workdir import load_run_info, restore_params


@dataclasses.dataclass(frozen=True)
class Teacher:
    module: nn.Module
    variables: dict  # {"params": ..., **model_state}, on the host
    model_name: str
    workdir: str
    step: int

    def describe(self) -> str:
        return f"{self.model_name} from {self.workdir} (step {self.step})"


def distillation_loss(student_logits, teacher_logits, labels, *, alpha: float, temperature: float):
    """The distillation loss (see the module docstring); returns ``(loss, {"hard_loss", "soft_loss"})``.

    ``soft_loss`` is the cross-entropy of the tempered distributions before the ``T^2`` factor.
    Logits are ``[..., K]``, labels integer ``[...]``.
    """
    t = temperature
    log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    p_teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t, axis=-1)
    hard = -jnp.mean(jnp.take_along_axis(log_p_student, labels[..., None], axis=-1))
    soft = -jnp.mean(jnp.sum(p_teacher * log_p_student, axis=-1))
    loss = alpha * hard + (1.0 - alpha) * t * t * soft
    return loss, {"hard_loss": hard, "soft_loss": soft}


def distillation_task(task: Task, teacher: Teacher, *, alpha: float, temperature: float) -> Task:
    """``task`` (classification) whose training loss also matches the frozen teacher's logits.

    Metrics: ``loss`` (the distillation objective), ``ce`` (the student's plain cross-entropy at
    T=1, comparable with the eval loss), ``accuracy``, ``hard_loss``, ``soft_loss`` and the
    teacher's own ``teacher_accuracy`` on the batch.
    """
    variables = teacher.variables

    def loss_fn(module, params, model_state, batch, rng, train: bool):
        logits, new_model_state = apply_classifier(module, params, model_state, batch["inputs"], rng, train)
        teacher_logits = jax.lax.stop_gradient(teacher.module.apply(variables, batch["inputs"], deterministic=True))
        loss, parts = distillation_loss(logits, teacher_logits, batch["labels"], alpha=alpha, temperature=temperature)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        metrics = {
            "loss": loss,
            "ce": -jnp.mean(jnp.take_along_axis(log_p, batch["labels"][..., None], axis=-1)),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"]),
            "teacher_accuracy": jnp.mean(jnp.argmax(teacher_logits, -1) == batch["labels"]),
            **parts,
        }
        return loss, (metrics, new_model_state)

    return dataclasses.replace(task, name=f"{task.name}+distillation", loss_fn=loss_fn)


# Data settings a teacher must share with its student: other values mean other labels, other
# inputs, or a teacher that may have trained on the student's test images.
_SAME_DATA = ("dataset", "path", "val_fraction", "classes")


def load_teacher(config, example_input: np.ndarray, task_name: str, notify=print) -> Teacher:
    """Restores ``config.train.teacher``'s run and checks it can teach this student; raises
    TeacherError naming what is wrong (missing workdir or checkpoint, another task, another number
    of classes, other data or input shape)."""
    workdir = config.train.teacher
    where = f"train.teacher={workdir!r}"
    if task_name != "classification":
        raise TeacherError(f"{where}: distillation needs a classification student; --model={config.model_name} is a {task_name} model")
    try:
        info = load_run_info(workdir)
        teacher_config = info["config"]
        spec = get_model_spec(teacher_config.model_name)
    except (CheckpointError, UnknownModelError, KeyError, AttributeError) as e:
        raise TeacherError(f"{where}: {e}") from None
    if not os.path.isdir(os.path.join(workdir, "checkpoints")) or not os.listdir(os.path.join(workdir, "checkpoints")):
        raise TeacherError(f"{where}: the run has no checkpoint yet (nothing in {os.path.join(workdir, 'checkpoints')})")
    if spec.task != "classification":
        raise TeacherError(f"{where} is a {teacher_config.model_name} run (task {spec.task}); a {config.model_name} student needs a classification teacher")
    for field in _SAME_DATA:
        theirs, ours = teacher_config.data.get(field, ""), config.data[field]
        if theirs != ours:
            raise TeacherError(f"{where} was trained with data.{field}={theirs!r} but this run has data.{field}={ours!r}; "
                               "teacher and student must train on the same data and labels")
    if teacher_config.model.num_classes != config.model.num_classes:
        raise TeacherError(f"{where} has {teacher_config.model.num_classes} classes (model.num_classes) but this student has "
                           f"{config.model.num_classes}; they must match")
    want = tuple(info.get("example_input", {}).get("shape", ()))[1:]
    have = tuple(example_input.shape[1:])
    if want and want != have:
        raise TeacherError(f"{where} takes inputs of shape {want} but this run's are {have}; "
                           f"set --config.data.image_size={want[0]} to match the teacher")
    try:
        teacher_config, params, model_state, step = restore_params(workdir, notify=notify)
    except (CheckpointError, ValueError) as e:
        raise TeacherError(f"{where}: {e}") from None
    variables = jax.device_get({"params": params, **model_state})
    return Teacher(spec.make_module(teacher_config.model), variables, teacher_config.model_name, os.path.abspath(workdir), int(step))


def from_config(config, task: Task, example_input: np.ndarray, task_name: str, notify=print) -> tuple[Task, Teacher | None]:
    """The task the train step optimises: ``task`` itself, or its distillation when ``train.teacher`` is set."""
    if not config.train.teacher:
        return task, None
    teacher = load_teacher(config, example_input, task_name, notify=notify)
    return distillation_task(task, teacher, alpha=config.train.distill_alpha, temperature=config.train.distill_temperature), teacher


def config_problems(train_config) -> list[str]:
    t = train_config
    problems = []
    if not 0.0 <= t.distill_alpha <= 1.0:
        problems.append(f"train.distill_alpha must be in [0, 1] (got {t.distill_alpha})")
    if t.distill_temperature <= 0:
        problems.append(f"train.distill_temperature must be > 0 (got {t.distill_temperature})")
    return problems


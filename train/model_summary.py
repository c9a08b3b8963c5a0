"""``--summary``: parameters per module and FLOPs per example, without training.

Parameters come from an abstract init (``jax.eval_shape``: nothing is allocated). FLOPs come from
XLA's own cost analysis of the compiled forward pass (inference mode) and of one train step
(forward + backward + optimizer update), divided by the batch they were compiled for, so they
are what XLA will run, fusions and all, not a hand count.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from archlab.arch import get_model_spec
from archlab.train import data as data_lib
from archlab.train.optim import make_optimizer
from archlab.train.state import abstract_train_state
from archlab.train.step import make_train_step
from archlab.train.tasks import get_task


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    model: str
    rows: list[tuple[str, str, int]]  # (module path, parameter shapes, count)
    total_params: int
    forward_flops_per_example: float
    train_flops_per_example: float
    batch: int
    input_shape: tuple

    def table(self) -> str:
        width = max([len(path) for path, _, _ in self.rows] + [6])
        shapes_width = min(max([len(s) for _, s, _ in self.rows] + [6]), 60)
        lines = [f"{'module':<{width}}  {'params':>12}  {'share':>6}  shapes", "-" * (width + shapes_width + 26)]
        for path, shapes, count in self.rows:
            lines.append(f"{path:<{width}}  {count:>12,}  {100 * count / max(self.total_params, 1):>5.1f}%  {shapes}")
        lines.append("-" * (width + shapes_width + 26))
        lines.append(f"{'total':<{width}}  {self.total_params:>12,}")
        lines.append(f"input per example: {self.input_shape}")
        lines.append(f"FLOPs per example (XLA cost analysis, batch {self.batch}): forward {_si(self.forward_flops_per_example)}, "
                     f"train step {_si(self.train_flops_per_example)}")
        return "\n".join(lines)


def _si(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}FLOP"
    return f"{value:.0f} FLOP"


def parameter_rows(params) -> list[tuple[str, str, int]]:
    """One row per module that owns parameters directly, in definition order."""
    rows = []

    def visit(tree, path):
        leaves = {k: v for k, v in tree.items() if not isinstance(v, dict) and hasattr(v, "shape")}
        if leaves:
            shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in leaves.items())
            rows.append(("/".join(path) or "(root)", shapes, int(sum(np.prod(v.shape) for v in leaves.values()))))
        for key, value in tree.items():
            if isinstance(value, dict):
                visit(value, path + [key])

    visit(params, [])
    return rows


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", float("nan")))


def summarize_model(config: ml_collections.ConfigDict, batch: int = 8) -> ModelSummary:
    """Parameter table and XLA FLOPs per example for ``config``'s model (one CPU device, no training)."""
    spec = get_model_spec(config.model_name)
    task = get_task(spec.task)
    dataset = data_lib.make_dataset(spec.task, config)
    if spec.from_data is not None:
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.update(spec.from_data(config.model, dataset))
    module = spec.make_module(config.model)
    tx = make_optimizer(config.train, spec.param_groups)
    example = jnp.asarray(dataset.example_input)
    state = nn.meta.unbox(abstract_train_state(module, tx, example))
    rows = parameter_rows(state.params)
    total = sum(count for _, _, count in rows)

    inputs = jax.ShapeDtypeStruct((batch,) + example.shape[1:], example.dtype)
    forward = jax.jit(lambda variables, x: module.apply(variables, x, deterministic=True))
    variables = {"params": state.params, **state.model_state}
    forward_flops = _flops(forward.lower(variables, inputs).compile())

    one = dataset.train.batch_at(0)
    batch_struct = {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype) for k, v in one.items()}
    train_step = jax.jit(make_train_step(module=module, task=task, tx=tx))
    train_flops = _flops(train_step.lower(state, batch_struct, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile())
    return ModelSummary(config.model_name, rows, total, forward_flops / batch, train_flops / batch, batch, tuple(example.shape[1:]))

"""Post-training int8 quantisation (PTQ) of a trained float run, and model sizes.

``quantize_run(workdir, calibration_batches=N)`` restores the run's latest checkpoint, builds the
same model with ``model.quant=int8`` (identical params, plus the ``quant`` collection of
activation ranges), runs N training batches through it in inference mode to set those ranges
(calibration), evaluates the float and the int8 model on the held-out split, and writes the int8
model as a normal workdir (config.json + orbax checkpoint) that ``launch.train`` can fine-tune
(quantisation-aware) and ``launch.export`` can load.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from archlab.arch import MODELS, get_model_spec
from archlab.arch.quant import quantize_weights
from archlab.train.checkpoint import Checkpointer
from archlab.train.data import make_dataset
from archlab.train.errors import QuantizeError
from archlab.train.optim import make_optimizer
from archlab.train.state import TrainState
from archlab.train.tasks import get_task
from archlab.train.tree_paths import param_path_name
from archlab.train.workdir import load_run_info, restore_params
from archlab.train.workdir_setup import check_workdir, write_run_info


def fresh_quant_state(module, example_input) -> dict:
    """The ``quant`` collection of an int8 module before any calibration (no ranges seen yet)."""
    variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), example_input, deterministic=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), dict(variables)["quant"])


def calibrate(module, params, model_state: dict, batches) -> dict:
    """``model_state`` with its ``quant`` ranges set from ``batches`` of inputs (inference mode).

    The ranges are reset first, so each input quantiser's ``amax`` ends as the mean over the
    batches of its per-batch ``max |x|`` (see arch.quant.ActivationQuantizer).
    """
    state = dict(model_state)
    state["quant"] = jax.tree.map(jnp.zeros_like, state["quant"])

    @jax.jit
    def observe(params, state, inputs):  # params an argument, not a constant XLA would try to fold
        _, updates = module.apply({"params": params, **state}, inputs, deterministic=True, mutable=["quant"])
        return dict(state, quant=updates["quant"])

    for inputs in batches:
        state = observe(params, state, jnp.asarray(inputs))
    return state


def model_size_bytes(params, quant_state: dict | None = None) -> dict:
    """Bytes of the float model vs the int8 model.

    int8: every Dense/Conv kernel as int8 codes plus one float32 scale per output channel, every
    other parameter (biases, BatchNorm) kept float32, plus one float32 scale per activation
    quantiser (the ``amax`` entries of ``quant_state``).
    """
    f32 = int8 = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        leaf = np.asarray(leaf)
        f32 += leaf.size * 4
        name = str(getattr(path[-1], "key", path[-1]))
        int8 += leaf.size + leaf.shape[-1] * 4 if name == "kernel" and leaf.ndim >= 2 else leaf.size * 4
    if quant_state is not None:
        int8 += 4 * sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(quant_state) if "amax" in jax.tree_util.keystr(path))
    return {"float32_bytes": f32, "int8_bytes": int8, "ratio": f32 / max(int8, 1)}


def int8_weights(params) -> dict:
    """{"path/to/kernel": (int8 codes, float32 per-channel scales)} for every Dense/Conv kernel."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if str(getattr(path[-1], "key", path[-1])) == "kernel" and leaf.ndim >= 2:
            out[param_path_name(path)] = quantize_weights(jnp.asarray(leaf))
    return out


def _evaluate(task, module, params, model_state, eval_batches) -> dict:
    step = jax.jit(lambda p, s, b, w: task.eval_sums(module, p, s, b, w))
    sums = None
    for batch, weights in eval_batches:
        out = step(params, model_state, batch, weights)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    return task.summarize(jax.device_get(sums))


def quantize_run(workdir: str, *, calibration_batches: int, out: str | None = None, notify=print) -> dict:
    """PTQ of ``workdir``'s latest checkpoint into ``out`` (default ``WORKDIR/ptq_int8``); returns the report.

    Raises QuantizeError (bad arguments, a model without an int8 variant, an already-int8 run, an
    ``out`` that already holds checkpoints) or train.checkpoint.CheckpointError (no such run).
    """
    if calibration_batches < 1:
        raise QuantizeError(f"--calibration_batches must be >= 1 (got {calibration_batches})")
    info = load_run_info(workdir)
    config = info["config"]
    if "quant" not in config.model:
        quantisable = sorted(name for name, spec in _models().items() if "quant" in spec.model_defaults())
        raise QuantizeError(f"model {config.model_name!r} has no int8 variant; quantisable models: {', '.join(quantisable)}")
    if config.model.quant != "none":
        raise QuantizeError(f"{workdir!r} is already an int8 model (model.quant={config.model.quant!r}, quantisation-aware training)")
    out = os.path.abspath(out or os.path.join(workdir, "ptq_int8"))
    if os.path.isdir(os.path.join(out, "checkpoints")) and os.listdir(os.path.join(out, "checkpoints")):
        raise QuantizeError(f"{out!r} already holds checkpoints; pass another --out or move it away")

    config, params, model_state, step = restore_params(workdir, notify=notify)
    spec = get_model_spec(config.model_name)
    task = get_task(spec.task)
    data = make_dataset(spec.task, config)
    float_module = spec.make_module(config.model)
    q_config = ml_collections.ConfigDict(config.to_dict())
    q_config.model.quant = "int8"
    q_config.lock()
    q_module = spec.make_module(q_config.model)
    example = jnp.asarray(data.example_input)

    q_state = calibrate(q_module, params, dict(model_state, quant=fresh_quant_state(q_module, example)),
                        (data.train.batch_at(i)["inputs"] for i in range(calibration_batches)))
    float_metrics = _evaluate(task, float_module, params, model_state, data.eval_batches)
    int8_metrics = _evaluate(task, q_module, params, q_state, data.eval_batches)
    report = {
        "workdir": os.path.abspath(workdir), "out": out, "model": config.model_name, "step": step,
        "calibration_batches": calibration_batches, "calibration_examples": calibration_batches * config.train.batch_size,
        "split": data.held_out_name, "float32": float_metrics, "int8_ptq": int8_metrics,
        "size": model_size_bytes(params, q_state["quant"]),
    }

    out = check_workdir(out)
    tx = make_optimizer(q_config.train, spec.param_groups)
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params), model_state=q_state,
                       rng=jax.random.PRNGKey(q_config.seed), nonfinite_step=jnp.full((), -1, jnp.int32))
    checkpointer = Checkpointer(os.path.join(out, "checkpoints"), keep=q_config.checkpoint.keep)
    try:
        checkpointer.save(step, state, data.train.get_state())
    finally:
        checkpointer.close()
    write_run_info(out, q_config, {"param_count": int(sum(np.size(x) for x in jax.tree.leaves(params))),
                                   "example_input": info.get("example_input"), "ptq": report})
    with open(os.path.join(out, "ptq.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def _models():
    return MODELS

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Parallelism: meshes, where each parameter lives, and one sharded step
#
# archlab's train step is written once and laid out by configuration: `parallel.mesh` names a mesh
# over the axes `data`, `fsdp` and `model`, and `parallel.rules` maps the logical axis names the
# models annotate (`batch`, `embed`, `heads`, `mlp`, `vocab`, ...) onto those mesh axes. This
# notebook builds meshes over 8 devices, shows where the transformer's parameters land under each
# rule set, and checks that one sharded train step computes what the single-device step computes.
#
# This machine has one CPU, so XLA is asked for 8 fake CPU devices. The flag must be set before JAX
# is imported (restart the kernel if JAX was already imported). **On real GPUs or TPUs no flag is
# needed**: `jax.devices()` already lists them, and the same code runs on them.

# %%
import os

FAKE_DEVICES = 8
_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
os.environ["XLA_FLAGS"] = " ".join(_flags + [f"--xla_force_host_platform_device_count={FAKE_DEVICES}"])

SMOKE = os.environ.get("SMOKE") == "1"

import jax  # noqa: E402  (after XLA_FLAGS, on purpose)
import numpy as np  # noqa: E402

from archlab.train import parallel  # noqa: E402
from archlab.train.compiled_run import Run  # noqa: E402
from archlab.train.config import apply_overrides, get_config  # noqa: E402
from archlab.train.placement import param_placements, placement_table, spec_table  # noqa: E402

if jax.device_count() < FAKE_DEVICES:
    raise RuntimeError(f"{jax.device_count()} device(s): JAX was imported before XLA_FLAGS was set; restart the kernel")
print(f"jax {jax.__version__}: {jax.device_count()} devices, e.g. {jax.devices()[:2]} ...; smoke mode: {SMOKE}")

# %% [markdown]
# ## Meshes
#
# `parallel.make_mesh("data:2,model:4")` lays the devices out as a named grid; one size may be
# `-1` ("the rest"). Each layout below uses all 8 devices: pure data parallel, FSDP (ZeRO-3), data x
# tensor parallel, and all three at once.

# %%
MESHES = ["data:8", "fsdp:8", "data:2,model:4", "data:2,fsdp:2,model:2"]
for spec in MESHES:
    mesh = parallel.make_mesh(spec)
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    print(f"{spec:<22} -> {parallel.mesh_shape(mesh)}; device ids laid out as:\n{ids}\n")

# %% [markdown]
# ## A model to place
#
# A small transformer from the registry (the same config the CLI's `--model=transformer` resolves,
# shrunk). `Run(config)` is what `train_and_evaluate` builds before its first step: data, mesh, rules,
# module, optimizer and the shardings of the whole train state, derived from the logical names.
# The learning-rate warm-up is off so that the very first step moves the parameters.

# %%
MODEL = ({"model.d_model": "32", "model.num_layers": "2", "model.num_heads": "4", "model.mlp_dim": "64", "model.max_len": "32",
          "data.seq_len": "32", "train.batch_size": "8"} if SMOKE else
         {"model.d_model": "128", "model.num_layers": "2", "model.num_heads": "4", "model.mlp_dim": "512", "data.seq_len": "128",
          "train.batch_size": "16"})
MODEL = {**MODEL, "train.warmup_steps": "0"}


def transformer_config(mesh: str, rules: str = "default", mode: str = "jit"):
    """The notebook's transformer on ``mesh`` (a mesh smaller than all devices uses the first N)."""
    sizes = [int(part.split(":")[1]) for part in mesh.split(",")]
    devices = str(int(np.prod(sizes))) if -1 not in sizes else "0"
    return apply_overrides(get_config("transformer"), {**MODEL, "parallel.mesh": mesh, "parallel.rules": rules,
                                                       "parallel.mode": mode, "parallel.num_devices": devices})


LAYOUT = "data:2,fsdp:2,model:2"
run = Run(transformer_config(LAYOUT))
print("\n".join(run.startup_report()))

# %% [markdown]
# ## Where each parameter lives
#
# The params are created already sharded (init is jitted with the shardings as outputs), so they
# never exist whole on one device. `jax.debug.visualize_array_sharding` draws a 2-D array's blocks
# with the devices holding each: under the `default` rules on `data:2,fsdp:2,model:2`, the MLP's
# input kernel `[embed, mlp]` splits `embed` over `fsdp` and `mlp` over `model`, so each block is held
# by the 2 devices of one `data` row (data parallel replicates params). The embedding `[vocab, embed]`
# splits the other way round; a LayerNorm scale `[embed]` is split over `fsdp` only.

# %%
state = run.init_state(0)
for name, array in [("layer_0/mlp/wi", state.params["layer_0"]["mlp"]["wi"]), ("embed/embedding", state.params["embed"]["embedding"]),
                    ("layer_0/ln_mlp/scale", state.params["layer_0"]["ln_mlp"]["scale"])]:
    print(f"{name} {array.shape} {array.sharding.spec}")
    jax.debug.visualize_array_sharding(array, scale=0.5, max_width=60)  # scale 0.5: labels stay in wide blocks

# %% [markdown]
# The batch follows the `batch` rule: its rows split over `data` and `fsdp` together (4 ways),
# replicated over `model`.

# %%
host_batch = run.train_iterator().batch_at(0)  # batch 0, without advancing the iterator
placed_batch = run.place_batch(host_batch)
print({k: (v.shape, v.sharding.spec) for k, v in placed_batch.items()})
jax.debug.visualize_array_sharding(placed_batch["tokens"], scale=0.5, max_width=60)

# %% [markdown]
# Every parameter, read off the placed arrays: its PartitionSpec, the shard one device holds, how
# many distinct shards there are and how many devices hold each, and the bytes one device stores.
# The total row is the point of FSDP and tensor parallelism: one device holds a quarter of the model.

# %%
print("\n".join(placement_table(param_placements(state.params))))

# %% [markdown]
# The same params under each `parallel.rules` preset on the same mesh (`-` is a dimension kept
# whole). `data_parallel` replicates everything; `fsdp` splits the `embed` dimension of every weight
# over `fsdp` (gathered per use); `tensor_parallel` is Megatron: attention heads, MLP hidden and
# vocab over `model`; `default` combines both.

# %%
RULES = ["data_parallel", "fsdp", "tensor_parallel", "default"]
print("\n".join(spec_table({rules: Run(transformer_config(LAYOUT, rules)).state_shardings.params for rules in RULES})))

# %% [markdown]
# ## One sharded step against the single-device step
#
# The library's own train step (`Run.compile_train_step`: `jax.jit` with in/out shardings, state
# donated), run from the same initial state on the same batches, on 1 device and on each layout. The
# state is the one initialised above, copied to the host and placed onto each layout's shardings (a
# checkpoint restores onto a new layout the same way). Sharded reductions sum in another order, so
# losses and params agree to float32 round-off (the test suite holds them to atol 2e-5), not bit
# for bit. The full run also compares the legacy `pmap` path (replicated params, `pmean` of gradients).

# %%
STEPS = 1 if SMOKE else 3
LAYOUTS = ([("data:2,fsdp:2,model:2", "jit")] if SMOKE else
           [("data:8", "jit"), ("fsdp:8", "jit"), ("data:2,model:4", "jit"), ("data:2,fsdp:2,model:2", "jit"), ("data:-1", "pmap")])


def train_steps(layout: Run, start, steps: int):
    """Per-step losses and the final params on the host, through the loop's own Run of one layout.

    ``start`` is a whole train state on the host, placed onto this layout's shardings first.
    """
    state = layout.to_layout(jax.device_put(start, layout.state_shardings))
    step = layout.compile_train_step()
    batches = layout.train_iterator()  # batch i is a pure function of (seed, i): the same on every layout
    losses = []
    for i in range(steps):
        state, metrics = step(state, layout.place_batch(batches.batch_at(i)))
        losses.append(layout.host_metrics(metrics)["loss"])
    return np.array(losses), jax.device_get(layout.to_global(state).params)


def max_difference(tree_a, tree_b) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)))


start = jax.device_get(run.init_state(0))  # the initial train state (params, optimizer state, step, rng), whole on the host
single_losses, single_params = train_steps(Run(transformer_config("data:1")), start, STEPS)
print(f"1 device: losses {np.round(single_losses, 5).tolist()}; "
      f"the steps moved params by up to {max_difference(single_params, start.params):.2e}")

print("\n| layout | mode | losses | max abs loss difference | max abs param difference |\n|---|---|---|---|---|")
for mesh_spec, mode in LAYOUTS:
    layout = run if (mesh_spec, mode) == (LAYOUT, "jit") else Run(transformer_config(mesh_spec, mode=mode))
    losses, params = train_steps(layout, start, STEPS)
    print(f"| {mesh_spec} | {mode} | {np.round(losses, 5).tolist()} | {np.max(np.abs(losses - single_losses)):.2e} "
          f"| {max_difference(params, single_params):.2e} |")

# %% [markdown]
# The differences are float32 round-off, orders of magnitude below how far the step moved the
# params: the layout changed where the work ran, not what was computed. The same config runs on a
# real multi-GPU host with `--config.parallel.mesh=...`, and across hosts through
# `jax.distributed.initialize` (see docs/parallelism.md and `launch/cluster/`).

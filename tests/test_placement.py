"""train.placement: the per-param placement and PartitionSpec tables read the real shardings."""

import jax
import numpy as np
import pytest
from conftest import tiny_config
from jax.sharding import NamedSharding, PartitionSpec

from archlab.train import parallel
from archlab.train.placement import param_placements, placement_table, spec_table


def _placed(mesh):
    put = lambda shape, spec: jax.device_put(np.ones(shape, np.float32), NamedSharding(mesh, spec))  # noqa: E731
    return {"dense": {"kernel": put((16, 8), PartitionSpec("data", "model")), "bias": put((8,), PartitionSpec())}}


def test_placements_read_shard_shapes_and_copies_off_the_arrays():
    mesh = parallel.make_mesh("data:4,model:2")
    rows = {r.name: r for r in param_placements(_placed(mesh))}
    kernel, bias = rows["dense/kernel"], rows["dense/bias"]
    assert kernel.shape == (16, 8) and kernel.shard_shape == (4, 4) and (kernel.shards, kernel.copies) == (8, 1)
    assert kernel.spec == str(PartitionSpec("data", "model")) and kernel.bytes_per_device == 4 * 4 * 4
    assert bias.shard_shape == (8,) and (bias.shards, bias.copies) == (1, 8) and bias.bytes_per_device == 32


def test_placement_table_totals_whole_model_and_one_device_share():
    lines = placement_table(param_placements(_placed(parallel.make_mesh("data:4,model:2"))))
    assert lines[2].startswith("| dense/bias |") and lines[3].startswith("| dense/kernel |")  # tree order
    assert "0.5 KiB whole" in lines[-1] and "**0.1**" in lines[-1]  # 512 + 32 bytes whole; 64 + 32 bytes on one device


def test_spec_table_puts_layouts_side_by_side():
    from archlab.train.compiled_run import Run

    shardings = {r: Run(tiny_config(model__num_heads="4", parallel__mesh="data:2,model:4", parallel__rules=r)).state_shardings.params
                 for r in ("data_parallel", "tensor_parallel")}
    lines = spec_table(shardings)
    assert lines[0] == "| param | data_parallel | tensor_parallel |"
    row = next(line for line in lines if line.startswith("| layer_0/mlp/wi |"))
    assert row == "| layer_0/mlp/wi | replicated | -, model |"
    with pytest.raises(ValueError, match="differ in size"):
        spec_table({"a": shardings["data_parallel"], "b": {"only": parallel.replicated(parallel.make_mesh("data:8"))}})

"""The ``nas_cell`` model family: a found NAS-Bench-201 cell as a Linen module that loads the
population search's params unchanged, rejects bad genotypes at the CLI, and trains on digits."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, cli_env, tiny_config

from archlab.arch import get_model_spec
from archlab.arch.nas_cell import CellNet, NASCellNet, init_member, member_logits
from archlab.arch.search_space import genotype_from_string

FOUND = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
ALL_OPS = "|nor_conv_1x1~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_3x3~1|nor_conv_1x1~2|"


@pytest.mark.parametrize("genotype", [FOUND, ALL_OPS])
def test_module_params_match_init_member_and_apply_equals_member_logits(genotype):
    net = CellNet(channels=8, in_channels=1, num_classes=10)
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 1))
    module = NASCellNet(genotype=genotype, channels=8, num_classes=10)

    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)["params"]  # shapes only: init compiles slowly here
    member = init_member(jax.random.PRNGKey(2), net)
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in member.items()}

    codes = tuple(int(op) for op in genotype_from_string(genotype))
    got = module.apply({"params": member}, images)
    want = member_logits(member, codes, images)
    assert got.shape == (4, 10)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    # the genotype matters: another cell on the same params gives other logits
    other = NASCellNet(genotype=FOUND if genotype == ALL_OPS else ALL_OPS, channels=8, num_classes=10).apply({"params": member}, images)
    assert not np.allclose(np.asarray(other), np.asarray(got))


def test_registry_default_config_builds_a_16x16_model():
    config = tiny_config("nas_cell")
    spec = get_model_spec("nas_cell")
    assert spec.task == "classification" and config.data.image_size == 16
    example = spec.example_input(config)
    module = spec.make_module(config.model)
    logits = jax.eval_shape(lambda x: module.apply(module.init(jax.random.PRNGKey(0), x), x), example)
    assert logits.shape == (1, config.model.num_classes)


def test_image_size_not_divisible_by_4_is_rejected():
    from archlab.train.config import ConfigError

    with pytest.raises(ConfigError, match="image_size must be divisible by 4"):
        tiny_config("nas_cell", data__image_size="10")
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(NASCellNet(genotype=FOUND, channels=16, num_classes=10).init, jax.random.PRNGKey(0), np.zeros((1, 10, 10, 1), np.float32))


def test_cli_rejects_a_bad_genotype_with_one_line():
    bad = "|conv9x9~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--model=nas_cell", f"--config.model.genotype={bad}", "--workdir=/nonexistent/never"],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "model.genotype" in lines[0] and "'conv9x9'" in lines[0] and "edge 1" in lines[0]
    assert "valid ops: none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3" in lines[0]


def test_tiny_training_run_learns_digits(tmp_path):
    from archlab.train.loop import train_and_evaluate

    config = tiny_config("nas_cell", train__steps=60, train__batch_size=32, parallel__mesh="data:1", model__channels="4",
                         model__genotype=FOUND, train__eval_every=1000, checkpoint__every=1000)
    summary = train_and_evaluate(config, str(tmp_path), progress=False, echo=lambda *a, **k: None)
    assert summary["step"] == 60 and not summary["interrupted"]
    assert summary["eval"]["accuracy"] > 0.5, summary["eval"]  # chance is 0.1
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "checkpoints").is_dir()

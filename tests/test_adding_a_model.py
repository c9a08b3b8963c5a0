"""docs/adding_a_model.md's worked example, as a newcomer follows it: its three pieces (module file,
config file, registry line) pasted into a scratch copy of the repository, then trained from the
command line. Nothing else of the repository changes."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, assert_one_line_error, cli_env

DOC = os.path.join(REPO, "docs", "adding_a_model.md")


def _doc_blocks() -> dict[str, str]:
    """The page's ```python blocks, keyed by the file their first-line comment names."""
    text = open(DOC).read()
    blocks = {}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        first, _, body = block.partition("\n")
        blocks[first.removeprefix("# ").strip()] = body
    return blocks


def _doc_commands() -> list[list[str]]:
    text = open(DOC).read()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    return [line.split()[2:] for line in lines if line.startswith("python -m launch.train")]


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory):
    """A copy of the repository's packages with the doc's three pieces added; data, tests and
    docs are left out (the packages ship their own data)."""
    root = tmp_path_factory.mktemp("newcomer") / "archlab"
    for folder in ("archlab", "arch", "configs", "train", "launch", "deploy", "bench"):
        shutil.copytree(os.path.join(REPO, folder), root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    blocks = _doc_blocks()
    assert set(blocks) == {"arch/convmixer.py", "configs/convmixer.py", "arch/__init__.py"}
    (root / "arch" / "convmixer.py").write_text(blocks["arch/convmixer.py"])
    (root / "configs" / "convmixer.py").write_text(blocks["configs/convmixer.py"])
    import_line, registry_line = blocks["arch/__init__.py"].rstrip("\n").split("\n")
    registry = (root / "arch" / "__init__.py").read_text()
    last_import = max(registry.rindex(line) for line in registry.splitlines() if line.startswith("from archlab.arch."))
    end_of_line = registry.index("\n", last_import) + 1
    registry = registry[:end_of_line] + import_line + "\n" + registry[end_of_line:]
    registry = registry.replace("\n}\n", f"\n{registry_line}\n}}\n", 1)  # the end of MODELS, the file's first top-level "}"
    (root / "arch" / "__init__.py").write_text(registry)
    return root


def _run(root, *args, timeout=600):
    env = {**cli_env(), "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_example_is_three_pieces_of_the_documented_shape():
    blocks = _doc_blocks()
    assert blocks["arch/__init__.py"].strip().count("\n") == 1  # the import and one MODELS line
    assert "class ConvMixer(nn.Module)" in blocks["arch/convmixer.py"]
    assert 'c.model_name = "convmixer"' in blocks["configs/convmixer.py"]


def test_the_new_family_trains_from_the_command_line_and_learns(scratch_repo, tmp_path):
    first, second = _doc_commands()
    workdir = tmp_path / "convmixer"
    args = [a if not a.startswith("--workdir=") else f"--workdir={workdir}" for a in first]
    proc = _run(scratch_repo, *args, "--config.train.steps=120", "--config.train.eval_every=120", "--no_progress")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [row for row in rows if row.get("split") == "eval"][-1]
    assert final["step"] == 120 and final["accuracy"] > 0.5, final  # ten digit classes: chance is 0.1
    config = json.loads((workdir / "config.json").read_text())["config"]
    assert config["model"] == {"width": 32, "depth": 3, "patch_size": 2, "kernel_size": 5, "num_classes": 10,
                               "bn_momentum": 0.9, "dtype": "float32", "param_dtype": "float32"}
    # the second command: overrides of the new fields parse and the mesh and shapes check out
    proc = _run(scratch_repo, *[a if not a.startswith("--workdir=") else f"--workdir={tmp_path / 'd4'}" for a in second], "--dry_run")
    assert proc.returncode == 0 and "dry run OK" in proc.stdout, proc.stderr


def test_the_new_family_validates_its_own_fields_and_is_listed(scratch_repo, tmp_path):
    proc = _run(scratch_repo, "launch.train", "--model=convmixer", f"--workdir={tmp_path / 'w'}", "--config.model.patch_size=3")
    assert_one_line_error(proc, "data.image_size (16) must be divisible by model.patch_size (3)")
    assert not (tmp_path / "w").exists()
    proc = _run(scratch_repo, "launch.train", "--model=nope")
    assert_one_line_error(proc, "convmixer")  # the valid models now name it

"""Every research notebook runs top to bottom in smoke mode (SMOKE=1) in a real Jupyter kernel.

The notebooks are jupytext percent scripts (notebooks/*.py); each is read as a notebook and executed
cell by cell by nbclient, in a fresh temporary directory, the way a researcher's kernel would run it.
"""

from __future__ import annotations

import ast
import glob
import os
import re

import jupytext
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import REPO

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.py")))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in NOTEBOOKS]


def test_the_notebooks_are_there():
    assert set(NAMES) == {"quickstart", "model_zoo", "parallelism", "nas", "export", "gan_and_nerf"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    # the kernel gets a researcher's environment, not conftest's 8 fake devices (parallelism.py sets its own)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    monkeypatch.setenv("XLA_FLAGS", flags)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = jupytext.read(path)
    client = NotebookClient(notebook, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except CellExecutionError as e:  # the failing cell's source and traceback, not the kernel's noise
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # IPython's colours
        pytest.fail(f"{os.path.basename(path)} failed in smoke mode:\n{message[-4000:]}")
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_is_thin_over_the_library(path):
    """No model or training code of its own: no Module subclasses, no optimizers, no hand-made train steps."""
    source = "\n".join(cell.source for cell in jupytext.read(path).cells if cell.cell_type == "code")
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            pytest.fail(f"{os.path.basename(path)} defines class {node.name}: models belong in arch/")
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n == "optax" or n.startswith("optax.") for n in names), "optimizers belong in train/"
    assert "SMOKE" in source, "every notebook has a SMOKE switch"


def test_jupytext_execute_runs_a_notebook_from_the_command_line(tmp_path):
    """`jupytext --to ipynb --execute` as a researcher types it: the kernelspec comes from the notebook's
    header, nbconvert executes it, and tqdm's bars render as widgets (no IProgress warning)."""
    import json
    import shutil
    import subprocess
    import sys

    shutil.copy(os.path.join(REPO, "notebooks", "quickstart.py"), tmp_path / "quickstart.py")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    env = {**os.environ, "SMOKE": "1", "XLA_FLAGS": flags, "PYTHONPATH": REPO}
    jupytext = os.path.join(os.path.dirname(sys.executable), "jupytext")
    proc = subprocess.run([jupytext, "--to", "ipynb", "--execute", "quickstart.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notebook = json.load(open(tmp_path / "quickstart.ipynb"))
    outputs = [o for cell in notebook["cells"] for o in cell.get("outputs", [])]
    assert outputs and not [o for o in outputs if o.get("output_type") == "error"]
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    assert "IProgress" not in proc.stderr + json.dumps(outputs)

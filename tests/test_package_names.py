"""archlab's modules live under one namespace (``archlab.train`` ...), so a user's own ``train.py``
or ``launch/`` never shadows them; the short names (``import train``, ``python -m launch.train``)
are aliases of the same module objects (archlab/short_names.py)."""

import os
import subprocess
import sys

from conftest import cli_env

TWO_STEPS = ["--model=mlp", "--config.train.steps=2", "--config.train.eval_every=2", "--no_progress",
             "--config.parallel.distributed=off"]


def installed_env() -> dict:
    """As a user's shell after ``pip install -e .``: the repository is not on PYTHONPATH."""
    env = cli_env()
    env.pop("PYTHONPATH", None)
    return env


def user_project(root, with_launch: bool):
    """A user's project with its own ``train.py`` (and ``launch/``) that records being imported."""
    root.mkdir()
    marker = root / "imported.txt"
    (root / "train.py").write_text(f"open({str(marker)!r}, 'a').write('train.py\\n')\nMINE = True\n")
    if with_launch:
        (root / "launch").mkdir()
        (root / "launch" / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('launch\\n')\n")
        (root / "launch" / "train.py").write_text("raise SystemExit('the user launch/train.py ran')\n")
    return root, marker


def run(args, cwd, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=installed_env(), capture_output=True, text=True, timeout=timeout)


def test_python_m_archlab_trains_from_a_folder_with_its_own_train_py_and_launch(tmp_path):
    project, marker = user_project(tmp_path / "project", with_launch=True)
    proc = run(["-m", "archlab", "train", *TWO_STEPS, f"--workdir={tmp_path / 'w'}"], cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "test at step 2" in proc.stderr + proc.stdout
    assert (tmp_path / "w" / "checkpoints").is_dir()
    assert not marker.exists(), marker.read_text()  # neither the user's train.py nor their launch/ was imported


def test_python_m_launch_train_works_beside_a_users_train_py(tmp_path):
    project, marker = user_project(tmp_path / "project", with_launch=False)
    proc = run(["-m", "launch.train", *TWO_STEPS, f"--workdir={tmp_path / 'w'}"], cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), marker.read_text()


def test_the_console_script_and_bad_commands(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "archlab")
    assert os.path.exists(script), "pip install -e . installs the archlab console script ([project.scripts])"
    project, marker = user_project(tmp_path / "project", with_launch=True)
    proc = subprocess.run([script, "sample", "--help"], cwd=project, env=installed_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--workdir" in proc.stdout and "default" in proc.stdout, proc.stderr
    proc = run(["-m", "archlab", "trian"], cwd=project)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "'trian'" in lines[0] and "train, sample, export" in lines[0], proc.stderr
    assert not marker.exists()


def test_a_users_train_module_and_archlab_coexist_in_one_process(tmp_path):
    project, _ = user_project(tmp_path / "project", with_launch=False)
    code = ("import train, archlab.train.loop, archlab.arch\n"
            "assert train.MINE and archlab.train.loop.train_and_evaluate\n"
            "assert 'mlp' in archlab.arch.MODELS\n"
            "print('ok')")
    proc = run(["-c", code], cwd=project)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_short_names_are_the_same_module_objects(tmp_path):
    code = ("import train.loop, archlab.train.loop, arch, archlab.arch\n"
            "from train.config import ConfigError as short\n"
            "from archlab.train.config import ConfigError as full\n"
            "import configs.transformer, archlab.configs.transformer\n"
            "assert train.loop is archlab.train.loop and arch.MODELS is archlab.arch.MODELS and short is full\n"
            "assert configs.transformer is archlab.configs.transformer\n"
            "assert archlab.train.loop.__spec__.name == 'archlab.train.loop'\n"
            "assert not [m for m in __import__('sys').modules.values() if getattr(m, '__name__', '').startswith(('train.', 'arch.'))]\n"
            "print('ok')")
    proc = run(["-c", code], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr

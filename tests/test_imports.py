"""The package import graph: every module imports in a fresh interpreter, imports between archlab's
modules form no cycle, only the thin entry points (``launch/``) import project modules inside
functions (elsewhere a function-level import is how a cycle hides), and no module reaches for
another's private names."""

import ast
import os
import subprocess
import sys

from conftest import REPO, cli_env

PACKAGES = ("arch", "train", "launch", "deploy", "bench", "configs")


def project_modules() -> dict[str, str]:
    """``archlab.train.loop`` -> its file, for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    dotted = os.path.relpath(os.path.join(folder, name), REPO)[:-3].replace(os.sep, ".")
                    modules["archlab." + dotted.removesuffix(".__init__")] = os.path.join(folder, name)
    return modules


def project_imports(modules: dict[str, str]):
    """Yields (importer, imported module, inside a function?) for every import of a project module,
    and of the packages above it (their ``__init__`` runs first)."""

    def owner(name: str) -> str | None:  # archlab.train.loop.Run -> archlab.train.loop
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in modules.items():
        tree = ast.parse(open(path).read(), path)

        def visit(node, in_function: bool):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ImportFrom) and child.level == 0 and (child.module or "").startswith("archlab"):
                    names = [f"{child.module}.{alias.name}" for alias in child.names]
                elif isinstance(child, ast.Import):
                    names = [alias.name for alias in child.names if alias.name.startswith("archlab")]
                else:
                    names = []
                for name in names:
                    target = owner(name)
                    while target and target != "archlab":  # importing a.b.c runs a/b/__init__.py too
                        if target != module and not module.startswith(target + "."):
                            yield module, target, in_function
                        target = target.rpartition(".")[0]
                yield from visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        yield from visit(tree, False)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (as a path that returns to its start), or None."""
    state, stack = {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = walk(target)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_the_import_graph_of_the_packages_is_acyclic():
    modules = project_modules()
    assert len(modules) > 100
    edges = {}
    for importer, imported, _ in project_imports(modules):
        edges.setdefault(importer, set()).add(imported)
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_only_launch_imports_project_modules_inside_functions():
    inside = sorted({f"{importer} imports {imported}" for importer, imported, in_function in project_imports(project_modules())
                     if in_function and not importer.startswith("archlab.launch")})
    assert inside == [], "\n".join(inside)


def test_no_module_imports_another_modules_private_names():
    private = []
    for module, path in project_modules().items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("archlab"):
                private += [f"{module}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
    assert private == [], "\n".join(private)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_every_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, sys\n"
            "failed = []\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as e:\n"
            "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(failed))\n"
            "sys.exit(1 if failed else 0)\n")
    names = sorted(project_modules())
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]

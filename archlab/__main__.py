"""``python -m archlab COMMAND [flags]`` (or the ``archlab`` console script): archlab's commands by
their namespaced modules, so they run from any folder, including one with its own ``train.py`` or
``launch/``. ``python -m archlab train --model=mlp`` is ``python -m launch.train --model=mlp``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import re
import sys
import textwrap

COMMANDS = ("train", "sample", "export", "nas", "quantize", "benchmark", "tokenizer")


def summary(command: str) -> str:
    """The first sentence of launch/COMMAND.py's parser description, up to its first ``:`` or ``;``.

    Read from the source (the parser is built inside ``main``, after its jax imports): the string
    given as ``description=`` to its ``OneLineParser(...)``.
    """
    launch = importlib.util.find_spec("archlab.launch")  # imports archlab only, not archlab.launch
    path = importlib.machinery.PathFinder.find_spec(command, launch.submodule_search_locations).origin
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "OneLineParser":
            for keyword in node.keywords:
                if keyword.arg == "description" and isinstance(keyword.value, ast.Constant):
                    text = " ".join(str(keyword.value.value).split())
                    return re.split(r"\.(?:\s|$)|: |; ", text, maxsplit=1)[0]
    return ""


def usage(program: str = "python -m archlab") -> str:
    rows = "\n".join(textwrap.fill(summary(name), 100, initial_indent=f"  {name:<10} ", subsequent_indent=" " * 13)
                     for name in COMMANDS)
    return f"usage: {program} COMMAND [flags]   (COMMAND --help lists its flags)\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None, program: str = "archlab") -> int:
    """Runs ``program COMMAND [flags]``; ``program`` (the console script, or ``python -m archlab``)
    names the command in its usage and error lines (``archlab nas: error: ...``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage(program))
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        sys.stderr.write(f"error: {given}; valid: {', '.join(COMMANDS)} ({program} COMMAND --help)\n")
        return 2
    cli = importlib.import_module("archlab.launch.cli")
    command = importlib.import_module(f"archlab.launch.{argv[0]}")
    with cli.invoked_as(f"{program} {argv[0]}"):
        return command.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(program="python -m archlab"))

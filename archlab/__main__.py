"""``python -m archlab COMMAND [flags]`` (or the ``archlab`` console script): archlab's commands by
their namespaced modules, so they run from any folder, including one with its own ``train.py`` or
``launch/``. ``python -m archlab train --model=mlp`` is ``python -m launch.train --model=mlp``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "train a model family (--model=NAME or --config=FILE)",
    "sample": "generate text from a trained Transformer LM workdir",
    "export": "export a trained workdir: SavedModel, ONNX, TensorRT, parity report, latency",
    "nas": "architecture search: evolution, REINFORCE controller, random or grid",
    "quantize": "post-training quantization of a trained workdir",
    "benchmark": "the benchmark suites (train, compile, parallel, nas, infer, data)",
    "tokenizer": "train a sentencepiece tokenizer and pre-tokenize a text file",
}


def usage() -> str:
    rows = "\n".join(f"  {name:<10} {what}" for name, what in COMMANDS.items())
    return f"usage: python -m archlab COMMAND [flags]   (COMMAND --help lists its flags)\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    if not argv or argv[0] not in COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        sys.stderr.write(f"error: {given}; valid: {', '.join(COMMANDS)} (python -m archlab COMMAND --help)\n")
        return 2
    command = importlib.import_module(f"archlab.launch.{argv[0]}")
    return command.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

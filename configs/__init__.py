"""Config files, one per model family: ``get_config(arg=None)`` returns a complete run config.

``python -m launch.train --config=configs/NAME.py[:arg]`` loads one by path (ml_collections
``config_flags`` semantics); ``--model=NAME`` loads the file and arg its registry entry names
(``ModelSpec.config``). These files are the one source of every default; ``nas.py`` holds
``launch.nas``'s (a search config, no model).
"""

from __future__ import annotations

from archlab import short_names  # noqa: E402

short_names.alias(__name__)  # imported as ``configs``: become ``archlab.configs`` (archlab/short_names.py)

import importlib
from types import ModuleType

import ml_collections


def family_module(ref: str) -> ModuleType:
    """``"resnet.py:r34"`` -> the module configs.resnet."""
    return importlib.import_module(f"archlab.configs.{ref.partition(':')[0].removesuffix('.py')}")


def from_ref(ref: str) -> ml_collections.ConfigDict:
    """``"resnet.py:r34"`` -> ``configs/resnet.py``'s ``get_config("r34")`` (no arg: ``get_config()``)."""
    arg = ref.partition(":")[2]
    module = family_module(ref)
    return module.get_config(arg) if arg else module.get_config()

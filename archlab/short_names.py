"""``import train`` (a short name) gives the very module ``archlab.train``, never a second copy.

Each of archlab's top-level packages calls :func:`alias` first thing. Imported by its short name
(``python -m launch.train``, ``from train.loop import ...`` in an old notebook), the package swaps
itself in ``sys.modules`` for its ``archlab.`` module and installs :class:`ShortNameFinder`, which
does the same for every submodule (``train.loop`` is ``archlab.train.loop``): one registry, one
set of error classes, whichever name a caller used. A user's own ``train.py`` found earlier on
``sys.path`` is simply theirs: archlab's own modules never import a short name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

from archlab import SUBPACKAGES


def alias(module_name: str) -> None:
    """Called by each top-level package with its ``__name__``: a short name becomes an alias."""
    if module_name.startswith("archlab."):
        return
    install_finder()
    sys.modules[module_name] = importlib.import_module(f"archlab.{module_name}")


def install_finder() -> None:
    if not any(isinstance(finder, ShortNameFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, ShortNameFinder())


class ShortNameFinder(importlib.abc.MetaPathFinder):
    """Finds ``train.x.y`` as an alias of ``archlab.train.x.y`` once ``train`` is the alias."""

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top not in SUBPACKAGES or "." not in fullname:
            return None
        if not getattr(sys.modules.get(top), "__name__", "").startswith("archlab."):
            return None  # the short name is someone else's package (a user's own train/)
        real = importlib.util.find_spec(f"archlab.{fullname}")
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, AliasLoader(real), origin=real.origin,
                                              is_package=real.submodule_search_locations is not None)
        spec.submodule_search_locations = real.submodule_search_locations
        spec.has_location = real.has_location  # runpy sets __file__ from it
        return spec


class AliasLoader(importlib.abc.Loader):
    """Loads an alias by importing the real module; runpy (``python -m launch.train``) gets its code."""

    def __init__(self, real_spec):
        self.real_spec = real_spec

    def create_module(self, spec):
        return importlib.import_module(self.real_spec.name)

    def exec_module(self, module):
        module.__spec__ = self.real_spec  # importlib set the alias's spec on the shared module object

    def get_code(self, fullname):
        return self.real_spec.loader.get_code(self.real_spec.name)

    def is_package(self, fullname):
        return self.real_spec.submodule_search_locations is not None

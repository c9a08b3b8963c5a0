"""Which accelerator JAX_PLATFORMS asks for, and whether its plugin is installed (no jax import here).

jax 0.10 with ``JAX_PLATFORMS=cuda`` and no CUDA plugin fails inside its backend setup with a bare
``AssertionError``; :func:`missing_platform_plugin` finds that case before jax starts, so the entry
points can say it in one line. A plugin that is installed but finds no device is left to jax, and
:func:`backend_error_line` shortens what it raises.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil

# JAX_PLATFORMS name -> (plugin module name prefixes under the jax_plugins namespace, pip hint)
PLUGINS = {
    "cuda": (("xla_cuda",), "pip install -U 'jax[cuda12]'"),
    "gpu": (("xla_cuda", "xla_rocm"), "pip install -U 'jax[cuda12]'"),
    "rocm": (("xla_rocm",), "the ROCm jax plugin (jax-rocm7-plugin)"),
}


def _installed_plugins() -> set[str]:
    names = set()
    try:
        names |= {e.name for e in importlib.metadata.entry_points(group="jax_plugins")}
    except Exception:  # a broken distribution's metadata must not stop training on CPU
        pass
    if importlib.util.find_spec("jax_plugins") is not None:
        import jax_plugins

        names |= {m.name for m in pkgutil.iter_modules(getattr(jax_plugins, "__path__", []))}
    return names


def missing_platform_plugin(environ=os.environ) -> str | None:
    """One line naming the platform JAX_PLATFORMS asks for whose jax plugin is not installed, else None."""
    requested = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if not requested:
        return None
    if "tpu" in requested and importlib.util.find_spec("libtpu") is None and len(requested) == 1:
        return "JAX_PLATFORMS=tpu but libtpu is not installed (pip install -U 'jax[tpu]'); unset JAX_PLATFORMS or set it to cpu"
    installed = None
    for platform in requested:
        if platform not in PLUGINS:
            continue
        prefixes, hint = PLUGINS[platform]
        installed = _installed_plugins() if installed is None else installed
        if not any(name.startswith(prefixes) for name in installed):
            return (f"JAX_PLATFORMS={environ['JAX_PLATFORMS']} but no jax {platform.upper()} plugin is installed ({hint}); "
                    "unset JAX_PLATFORMS to use what this machine has, or set it to cpu")
    return None


def backend_error_line(error: BaseException) -> str | None:
    """One line for jax's failure to start a backend ("Unable to initialize backend 'cuda': ..."), else None."""
    text = str(error).strip()
    if "Unable to initialize backend" not in text and "Unknown backend" not in text:
        return None
    first = text.splitlines()[0][:300]
    return f"{first} (see CUDA_VISIBLE_DEVICES and JAX_PLATFORMS; JAX_PLATFORMS=cpu runs on the CPU)"

"""Thin entry points: argument parsing and error reporting only (``python -m launch.train``)."""

import sys

try:
    import train  # noqa: F401  (applies the host memory policy before an entry point starts JAX: train/host_memory.py)
except ValueError as err:  # an invalid ARCHLAB_HOST_MEMORY
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)

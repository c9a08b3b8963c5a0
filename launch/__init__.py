"""Thin entry points: argument parsing and error reporting only (``python -m launch.train``)."""

from archlab import short_names  # noqa: E402

short_names.alias(__name__)  # imported as ``launch``: become ``archlab.launch`` (archlab/short_names.py)

import sys

try:
    import archlab.train  # noqa: F401  (applies the host memory policy before an entry point starts JAX: train/host_memory.py)
except ValueError as err:  # an invalid ARCHLAB_HOST_MEMORY
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)

from archlab.train.xla_flags import relax_fake_device_collectives  # noqa: E402

relax_fake_device_collectives()  # fake CPU devices: no C++ abort when a loaded machine delays a collective (train/xla_flags.py)

"""Benchmarks: machine facts, suite measurements, and the JSON + markdown report.

``python -m launch.benchmark`` is the CLI; notebooks call the library directly::

    from archlab.bench.machine import machine_info
    from archlab.bench.parallel import measure
    results = {"machine": machine_info(), "parallel": measure(repeats=10)}

Importing this package does not import jax (``bench.xla_flags`` must run before it).
"""

from archlab import short_names  # noqa: E402

short_names.alias(__name__)  # imported as ``bench``: become ``archlab.bench`` (archlab/short_names.py)


class BenchmarkError(ValueError):
    """A benchmark that cannot run as asked (bad suite name, too few devices, unwritable output)."""

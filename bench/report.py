"""The benchmark report: the JSON file tools read and the markdown tables docs/performance.md embeds."""

from __future__ import annotations

import os
import tempfile

from archlab.bench import BenchmarkError
from archlab.bench.suites import markdown_table
from archlab.train.atomic_write import write_json_atomically


def check_writable(path: str) -> str:
    """Proves ``path`` can be written (without changing an existing file); returns it absolute.

    Raises BenchmarkError naming the path and why, so a long benchmark never ends unable to save.
    """
    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    if os.path.isdir(full):
        raise BenchmarkError(f"--out {path!r} is a directory; give a file name such as {os.path.join(path, 'benchmark.json')!r}")
    if not os.path.isdir(parent):
        raise BenchmarkError(f"--out {path!r} is not writable: directory {parent!r} does not exist")
    try:
        if os.path.exists(full):
            with open(full, "a"):
                pass
        else:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".bench-probe-"):
                pass
    except OSError as e:
        raise BenchmarkError(f"--out {path!r} is not writable ({e.strerror or e})") from None
    return full


def write_json(results: dict, path: str) -> str:
    """Writes ``results`` to ``path`` atomically (temp file + rename); returns the absolute path."""
    full = os.path.abspath(path)
    write_json_atomically(full, results, indent=2)
    return full


def machine_table(machine: dict) -> list[str]:
    flags = machine.get("xla_flags") or "(none)"
    return [
        "| machine | |",
        "|---|---|",
        f"| cpu | {machine['cpu']}, {machine['cores']} cores |",
        f"| jax / jaxlib | {machine['jax']} / {machine['jaxlib']} |",
        f"| peak f32 matmul | {machine['peak_flops'] / 1e9:.1f} GFLOP/s (jnp.dot, n={machine.get('peak_flops_n', '?')}) |",
        f"| XLA_FLAGS | `{flags}` |",
        f"| host memory policy (train/host_memory.py) | {machine.get('host_memory', '?')} |",
    ] + ([f"| load average before measuring | {machine['load_average']:.2f} |"] if machine.get("load_average") is not None else [])


def markdown(results: dict) -> str:
    """The machine table, then one table per suite present in ``results``, blank-line separated."""
    tables = []
    if "machine" in results:
        tables.append(machine_table(results["machine"]))
    tables += [markdown_table(name, section) for name, section in results.items() if name != "machine"]
    return "\n\n".join("\n".join(rows) for rows in tables)

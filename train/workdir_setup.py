"""A run directory being written: created and proved writable, its config.json, and the rule that an
earlier run's history is never silently overwritten. (``train/workdir.py`` reads a run back for
inference; ``train/workdir_lock.py`` keeps two trainers out of one directory.)"""

from __future__ import annotations

import os
import platform
import tempfile
import time

import jax
import jaxlib
import ml_collections

from archlab.train.atomic_write import write_json_atomically
from archlab.train.errors import WorkdirError
from archlab.train.metrics import read_metrics


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` if needed and proves it writable, without touching its contents."""
    if not workdir or not workdir.strip():
        raise WorkdirError("workdir is empty; give a directory")
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"workdir {workdir!r} is a file, not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise WorkdirError(f"workdir {workdir!r} is not writable ({e.strerror or e})") from None
    return workdir


def write_run_info(workdir: str, config: ml_collections.ConfigDict, extra: dict) -> None:
    info = {
        "config": config.to_dict(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "python": platform.python_version(),
        **extra,
    }
    write_json_atomically(os.path.join(workdir, "config.json"), info, indent=2, default=str)


def guard_history(workdir: str, restart: bool, say) -> None:
    """A workdir whose metrics.jsonl logged an earlier run but which has no checkpoint is never
    silently started over. (A config.json alone, from a run stopped before it logged a step, holds
    no history: it is rewritten.)"""
    metrics = os.path.join(workdir, "metrics.jsonl")
    if not (os.path.isfile(metrics) and read_metrics(metrics)):
        return
    if not restart:
        raise WorkdirError(
            f"{workdir} holds an earlier run's metrics.jsonl but no checkpoint to resume; refusing to start over "
            "and overwrite its history: pass --restart to train from step 0 (the old metrics.jsonl is kept aside), or use another --workdir"
        )
    if jax.process_index() == 0:
        kept = os.path.join(workdir, time.strftime("metrics.before-restart-%Y%m%d-%H%M%S.jsonl"))
        os.replace(metrics, kept)
        say(f"--restart: training from step 0; the earlier metrics are kept in {kept}")

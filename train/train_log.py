"""Timestamped train lines for cluster logs (``--no_progress``): step, loss, steps/s, ETA every
``train.log_every`` steps, through Python ``logging`` on process 0."""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("archlab.train")


def log_to_console(stream=None) -> None:
    """Sends the train lines to ``stream`` (stdout) as ``2026-01-31 12:00:00 step ...``; entry points
    call this, a library user configures logging as they like."""
    if any(getattr(h, "_archlab", False) for h in LOGGER.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler._archlab = True
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def train_line(step: int, total: int, loss: float, steps_per_s: float) -> str:
    eta = (total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    return f"step {step}/{total} | loss {loss:.4f} | {steps_per_s:.2f} steps/s | ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"

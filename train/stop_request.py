"""Stopping a run on a signal: SIGTERM (preemption) or Ctrl-C, in one or several processes.

The loop asks :class:`StopRequest` once per step and saves and returns at the step it names; a
signal that arrives outside the loop (start-up, final evaluation) ends the run with
:class:`Interrupted` at the next stage boundary. Every checkpoint written so far stays intact.
"""

from __future__ import annotations

import contextlib
import signal

import jax


class Interrupted(RuntimeError):
    """SIGTERM/Ctrl-C arrived outside the training loop (start-up or the final evaluation); every
    checkpoint written so far is intact and the same command resumes."""


class StopRequest:
    """Set by SIGTERM (preemption) or a first Ctrl-C; the loop saves and returns at the next step.

    In a multi-process run the processes must stop at the same step or their next collective
    hangs, so there SIGTERM is left to JAX's preemption service and ``check(step)`` asks
    ``multihost_utils.reached_preemption_sync_point``, which agrees on one step across processes.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}
        self._multi_process = jax.process_count() > 1

    def __bool__(self):
        return self.signal_name is not None

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def raise_if_stopped(self, where: str) -> None:
        """At a stage boundary outside the loop: a pending SIGTERM/Ctrl-C ends the run here."""
        if self.signal_name is not None:
            raise Interrupted(f"received {self.signal_name} {where}")

    def check(self, step: int) -> bool:
        """Called once per step by every process; True when this step is where to stop."""
        if self._multi_process and self.signal_name is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = "a preemption notice (SIGTERM to a process)"
        return bool(self)

    @contextlib.contextmanager
    def installed(self):
        signals = () if self._multi_process else (signal.SIGTERM, signal.SIGINT)
        try:
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: run without handlers
            pass
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

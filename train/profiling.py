"""``train.profile_steps=START:COUNT``: a ``jax.profiler`` trace of COUNT train steps after the first
START, written to ``WORKDIR/tensorboard/plugins/profile/<run>/*.xplane.pb`` (TensorBoard's Profile tab).

START skips compilation and warm-up; the trace is stopped only once the traced steps' work is done.
"""

from __future__ import annotations

import jax


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """``"START:COUNT"`` -> (START, COUNT); ``""`` -> None (off); a ValueError for any other form."""
    if not text:
        return None
    start, sep, count = text.partition(":")
    if not (sep and start.strip().isdigit() and count.strip().isdigit() and int(count) >= 1):
        raise ValueError(f"train.profile_steps must be START:COUNT with START >= 0 and COUNT >= 1, e.g. 10:5, or empty (got {text!r})")
    return int(start), int(count)


def config_problems(t) -> list[str]:
    """The train section's profile_steps problems, for ``train.config.validate``."""
    try:
        window = parse_profile_steps(t.get("profile_steps", ""))
    except ValueError as e:
        return [str(e)]
    if window is not None and sum(window) > t.steps:
        return [f"train.profile_steps={t.profile_steps} runs past train.steps={t.steps}; START + COUNT must be <= train.steps"]
    return []


class ProfileWindow:
    """Starts a trace before step ``START`` (counted in steps done) and stops it after ``COUNT`` steps.
    A run resumed past START traces nothing."""

    def __init__(self, spec: str, logdir: str):
        self.window = parse_profile_steps(spec)
        self.logdir = logdir
        self.active = False

    def before_step(self, step: int) -> None:
        if self.window is not None and step == self.window[0] and not self.active:
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after_step(self, step: int, state) -> bool:
        """Stops the trace at the window's end (or when ``state`` is None, the loop ending early);
        True when it stopped one."""
        if not self.active or (state is not None and step < sum(self.window)):
            return False
        if state is not None:
            jax.block_until_ready(state)  # the traced steps' device work lands inside the trace
        jax.profiler.stop_trace()
        self.active = False
        return True

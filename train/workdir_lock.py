"""One trainer per workdir: an exclusive ``flock`` on ``WORKDIR/train.lock``.

The kernel releases the lock when the holding process exits, however it exits (kill -9
included), so a stale lock cannot outlive its trainer. The file holds the holder's pid, read by
the refused process to name it. Readers (sample, export) never take it. In a multi-process run each
process locks its own file (``train.lock.<process>``), so a second job on the same workdir is
refused on every process.
"""

from __future__ import annotations

import fcntl
import os

from archlab.train.errors import WorkdirLockedError


class WorkdirLock:
    def __init__(self, workdir: str, process_index: int = 0):
        name = "train.lock" if process_index == 0 else f"train.lock.{process_index}"
        self.path = os.path.join(workdir, name)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirLockedError(
                f"workdir {os.path.dirname(self.path)!r} is in use by another trainer (pid {holder}); "
                "wait for it to finish, stop it, or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

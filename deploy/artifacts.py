"""Atomic artifact writes: a file or directory appears complete under its final name, or not at all.

Each artifact is written under a hidden temporary name in the output directory and moved into
place with ``os.replace`` (a file) or two renames (a directory: the old one is moved aside first,
then deleted), so an interrupted export never leaves a half-written file that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(final: str, *, directory: bool):
    """Yields a temporary path next to ``final``; on success it replaces ``final``, on error it is removed."""
    parent = os.path.dirname(os.path.abspath(final)) or "."
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(final)
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.partial-", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.partial-", dir=parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; a published artifact reads like any file
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if directory:
        old = None
        if os.path.lexists(final):
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.rmdir(old)
            os.rename(final, old)
        os.rename(tmp, final)
        if old:
            _remove(old)
    else:
        os.replace(tmp, final)


def write_text(final: str, text: str) -> None:
    with atomic_path(final, directory=False) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_bytes(final: str, data: bytes) -> None:
    with atomic_path(final, directory=False) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)

"""A token (or byte) file read by position with ``os.pread``: any size, nothing held in memory.

nanoGPT maps its ``.bin`` with ``np.memmap``; here the file is read window by window instead,
because every page a mapping touches counts in the process's resident memory and stays there
(a long run over a 2 GB file would end up "holding" most of it), while ``pread`` leaves the
pages to the kernel's page cache. Reading 16 windows of 129 tokens is 16 system calls.
"""

from __future__ import annotations

import os
import weakref

import numpy as np


class TokenFile:
    """Tokens ``[start, start + count)`` of a file of little-endian ``dtype`` ids (uint8 for bytes)."""

    def __init__(self, path: str, dtype, start: int = 0, count: int | None = None):
        self.path, self.dtype = path, np.dtype(dtype).newbyteorder("<")
        total = os.path.getsize(path) // self.dtype.itemsize
        self.start = start
        self.count = total - start if count is None else count
        self._fd = None

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"TokenFile({self.path!r}, {self.dtype.name}, [{self.start:,}, {self.start + self.count:,}))"

    def __getstate__(self):  # worker processes open their own descriptor
        return {**self.__dict__, "_fd": None}

    def split(self, at: int) -> tuple["TokenFile", "TokenFile"]:
        """(tokens [0, at), tokens [at, len)) of this range."""
        return TokenFile(self.path, self.dtype, self.start, at), TokenFile(self.path, self.dtype, self.start + at, self.count - at)

    def read(self, position: int, count: int) -> np.ndarray:
        """``count`` tokens from ``position`` (relative to this range)."""
        if position < 0 or position + count > self.count:
            raise IndexError(f"tokens [{position}, {position + count}) outside [0, {self.count})")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
            weakref.finalize(self, os.close, self._fd)
        size = self.dtype.itemsize
        raw = os.pread(self._fd, count * size, (self.start + position) * size)
        if len(raw) != count * size:
            raise OSError(f"{self.path!r} is shorter than expected (was it truncated while training?)")
        return np.frombuffer(raw, self.dtype)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """int32 [len(starts), length]: the window of ``length`` tokens at each start."""
        return np.stack([self.read(int(s), length) for s in starts]).astype(np.int32) if len(starts) else np.zeros((0, length), np.int32)

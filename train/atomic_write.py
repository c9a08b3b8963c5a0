"""Files replaced in one step: written to a temporary file beside the target, then ``os.replace``d,
so a reader (or a resumed run after a crash) sees the old file or the new one, never half of one.
Run metadata (config.json, metrics.jsonl, checksums, NAS history, benchmark reports) goes through
here; export artifacts, which may be directories, through ``deploy/artifacts.py``."""

from __future__ import annotations

import json
import os
import tempfile


def write_text_atomically(path: str, text: str, *, fsync: bool = False) -> None:
    """Replaces ``path`` with ``text``; ``fsync`` flushes it to disk before the rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomically(path: str, value, *, fsync: bool = False, **dump_options) -> None:
    """``value`` as JSON (``json.dumps(value, **dump_options)``, then a newline)."""
    write_text_atomically(path, json.dumps(value, **dump_options) + "\n", fsync=fsync)


def write_jsonl_atomically(path: str, rows) -> None:
    """One JSON object per line."""
    write_text_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))

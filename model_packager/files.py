"""Durable, private file writes: the atomic replace and the folder fsync that bundles, keys,
enrolment and slot state rely on. Public: agents and the hub import these from here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "write_private"]


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (best effort where the OS cannot)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably, mode 0600 (a missing folder is
    created 0700): temp file, fsync, rename, fsync of the folder. For secrets and state that
    must survive a power cut (enrolment, broker passwd/ACL, a device's trusted key).
    Concurrent writers (threads or processes) each get their own temp file; the last rename
    wins and nobody sees a half-written file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name.lstrip('.')}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp creates the file 0600
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)

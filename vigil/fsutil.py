"""Small file-system steps that crash safety depends on, written once: atomic replace, directory fsync.

A rename is durable only once its directory is fsynced, and a file written in place can be seen half
written after a crash; every writer of a journal, a snapshot or a marker goes through these instead of
repeating the dance.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: the file in the data directory where a running daemon writes the URL it listens on (for the CLI)
DAEMON_URL_FILE = "daemon.url"


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old content or the new, never a mix:
    a temporary file beside it, fsynced, renamed over it, the directory fsynced. OSError on failure (the
    temporary file is removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def size_of(path: Path) -> int:
    """The size of ``path``, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0

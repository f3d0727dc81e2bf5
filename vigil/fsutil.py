"""Small file-system steps that crash safety depends on, written once: atomic replace, directory fsync, and
the lock that keeps a second daemon off a store.

A rename is durable only once its directory is fsynced, and a file written in place can be seen half
written after a crash; every writer of a journal, a snapshot or a marker goes through these instead of
repeating the dance.
"""

from __future__ import annotations

import fcntl
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


class LockedError(OSError):
    """Another process holds the lock; :attr:`holder` is what it wrote there (its pid), or ``"?"``."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by process {holder}")
        self.holder = holder


class ProcessLock:
    """An exclusive advisory lock (``flock``) on a file, held until :meth:`release` or the process ends (a
    crash or SIGKILL releases it too, so a stale lock file never blocks a restart). The holder writes its
    pid into the file, for the error message of whoever finds it taken."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(self._fd)
            raise LockedError(path, holder) from None
        except OSError:
            os.close(self._fd)
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # (closing the descriptor drops the lock)
            self._fd = None

"""The pieces of the file tail that hold no policy: a followed file's cursor, its bookkeeping, counters.

:class:`Cursor` is an open descriptor with its position, line number and the head and tail bytes read so
far (whose hashes identify the file across restarts and rotations); :class:`Followed` is one configured
path with the cursor it reads now and, during a rotation, the previous file it still finishes. Kept apart
from :mod:`vigil.streams.tail`, which decides what to read when, so that each stays readable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson

from vigil.events.batch import BatchNormalizer, Result
from vigil.events.deadletter import DeadLetter

#: bytes hashed at the start of a file (and before its position) to recognise it
HEAD_BYTES: Final = 1024

#: suffix under which the previous generation of a rotated file is looked for
ROTATED_SUFFIX: Final = ".1"

OPEN_FLAGS: Final = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


@dataclass
class TailStats:
    """What the file tails have done so far; written from the thread that polls (the event loop's)."""

    #: the tail task is alive
    running: bool = False
    #: completed polling rounds (every file stepped until none had a full batch left)
    polls: int = 0
    #: Unix time at which the last round ended
    last_poll_at: float | None = None
    #: files configured
    files: int = 0
    #: files whose path does not exist (yet), with nothing left to read
    files_waiting: int = 0
    #: path -> why it cannot be read now (permissions, not a regular file, the store); cleared on success
    errors: dict[str, str] = field(default_factory=dict)
    #: path -> committed byte position in the file being read for it
    positions: dict[str, int] = field(default_factory=dict)
    events: int = 0
    dead_letters: int = 0
    control_records: int = 0
    #: bytes and lines consumed (committed)
    bytes: int = 0
    lines: int = 0
    #: files replaced at their path (rename + create), and files truncated in place (copytruncate)
    rotations: int = 0
    truncations: int = 0

    def counters(self) -> dict[str, int]:
        """The monotonically increasing counts, by their short names."""
        return {
            "events": self.events,
            "dead_letters": self.dead_letters,
            "control_records": self.control_records,
            "bytes": self.bytes,
            "lines": self.lines,
            "rotations": self.rotations,
            "truncations": self.truncations,
        }


class Cursor:
    """One open file and the committed position in it."""

    __slots__ = (
        "dev",
        "fd",
        "head_bytes",
        "ino",
        "line",
        "pos",
        "rotated",
        "scan",
        "skip_head",
        "tail_bytes",
    )

    def __init__(self, fd: int, st: os.stat_result, *, rotated: bool = False) -> None:
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.pos = 0
        self.line = 0
        #: the first min(pos, HEAD_BYTES) bytes of the file and the last ones before pos, as read
        self.head_bytes = b""
        self.tail_bytes = b""
        #: a copy found as ``<path>.1``: closed at its end, never written to again
        self.rotated = rotated
        #: while skipping a line longer than max_record_bytes: how far its newline has been looked for
        self.scan = 0
        self.skip_head = b""

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def place(self, pos: int, line: int) -> None:
        """Move to ``pos`` (a line start), taking the head and tail bytes from the file."""
        self.pos, self.line, self.scan, self.skip_head = pos, line, 0, b""
        self.head_bytes = os.pread(self.fd, min(pos, HEAD_BYTES), 0) if pos else b""
        n = min(pos, HEAD_BYTES)
        self.tail_bytes = os.pread(self.fd, n, pos - n) if n else b""

    def mark(self) -> tuple[int, int, bytes, int, bytes, bytes]:
        """Everything :meth:`advance` changes, to undo it when the commit fails."""
        return self.pos, self.scan, self.skip_head, self.line, self.head_bytes, self.tail_bytes

    def restore(self, mark: tuple[int, int, bytes, int, bytes, bytes]) -> None:
        self.pos, self.scan, self.skip_head, self.line, self.head_bytes, self.tail_bytes = mark

    def advance(self, end: int, lines: int, data: bytes | None) -> None:
        """Move past ``data`` (the bytes from pos to ``end``; None when they were not held)."""
        if data is None:
            gap = min(end, HEAD_BYTES) - len(self.head_bytes)
            if gap > 0:
                self.head_bytes += os.pread(self.fd, gap, len(self.head_bytes))
            n = min(end, HEAD_BYTES)
            self.tail_bytes = os.pread(self.fd, n, end - n)
        else:
            if len(self.head_bytes) < HEAD_BYTES:
                self.head_bytes += data[: HEAD_BYTES - len(self.head_bytes)]
            self.tail_bytes = (self.tail_bytes + data[-HEAD_BYTES:])[-HEAD_BYTES:]
        self.pos, self.scan, self.skip_head = end, 0, b""
        self.line += lines

    def state(self) -> dict[str, Any]:
        """The stored offset (see the module docstring)."""
        return {
            "inode": self.ino,
            "dev": self.dev,
            "pos": self.pos,
            "line": self.line,
            "head": sha256_hex(self.head_bytes),
            "tail": sha256_hex(self.tail_bytes),
        }

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Followed:
    """One configured path: the file at it, and older generations still to be finished."""

    def __init__(self, path: Path, normalizer: BatchNormalizer) -> None:
        self.path = path
        self.name = f"tail:{path}"
        self.rotated_path = path.with_name(path.name + ROTATED_SUFFIX)
        self.normalizer = normalizer
        self.cur: Cursor | None = None
        #: older files (replaced or a rotated copy), oldest first; all are read before ``cur``
        self.behind: list[Cursor] = []
        self.started = False
        #: the position in memory is ahead of the stored one (storing it failed)
        self.dirty = False
        self.waiting = False
        self.error: str | None = None
        self.retry_at = 0.0
        self.delay = 0.0

    @property
    def reader(self) -> Cursor | None:
        return self.behind[0] if self.behind else self.cur

    def close(self) -> None:
        for cursor in (*self.behind, self.cur):
            if cursor is not None:
                cursor.close()
        self.behind, self.cur, self.started = [], None, False


@dataclass
class Outcome:
    """What one step did (applied to the stats by the polling thread)."""

    events: int = 0
    dead_letters: int = 0
    control_records: int = 0
    bytes: int = 0
    lines: int = 0
    rotations: int = 0
    truncations: int = 0
    #: a full batch was read, or a file was switched: step this file again without waiting
    more: bool = False

    def add(self, result: Result, consumed: int, lines: int) -> None:
        self.events += len(result.events)
        self.dead_letters += len(result.dead)
        self.control_records += len(result.controls)
        self.bytes += consumed
        self.lines += lines


def open_cursor(path: Path, *, rotated: bool = False) -> Cursor | None:
    """Open a regular file for reading (None if it does not exist); other problems raise OSError."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return Cursor(fd, st, rotated=rotated)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def nth_newline(data: bytes, n: int) -> int:
    at = -1
    for _ in range(n):
        at = data.index(b"\n", at + 1)
    return at


def place(dl: DeadLetter, line: int, offset: int) -> DeadLetter:
    """A dead letter numbered within a batch, renumbered within its file."""
    return msgspec.structs.replace(
        dl,
        line=None if dl.line is None else dl.line + line,
        offset=None if dl.offset is None else dl.offset + offset,
    )

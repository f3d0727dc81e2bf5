"""The file-tail source: JSONL files followed like ``tail -F``, resuming after a restart where they stopped.

Each path in ``ingest.tail_files`` is polled every ``ingest.poll_interval``. Only complete lines are taken:
a last line without its newline waits for it. Lines are normalised like every other input
(:class:`~vigil.events.batch.BatchNormalizer`, with the ingest format and caps); events go to the store's
event log and bad lines to its dead letters, both under the source name ``tail:<path>``, with the line's
byte offset and line number in the file. Each step reads at most :data:`MAX_BATCH_BYTES` or
:data:`MAX_BATCH_LINES` of one file, and files take turns, so one huge file does not starve the others.
A line longer than ``max_record_bytes`` is dead-lettered without ever being held in memory.

**Offsets.** After each batch the file's position is stored in the store's offsets, as JSON under the key
``tail:<path>``: ``{"inode", "dev", "pos", "line", "head", "tail"}``, where ``head`` is the SHA-256 of the
file's first ``min(pos, 1 KiB)`` bytes and ``tail`` that of the up to 1 KiB just before ``pos``. Both only
cover bytes already read, so they stay valid while the file grows.

**One commit per batch.** A batch's new offset is stored in the same transaction as its events and dead
letters
(:meth:`Store.accept <vigil.store.sqlite.Store.accept>` with ``offset=``): a crash keeps both or neither,
so after a restart no line is read twice and none is skipped.

**Rotation.** At each step the path is compared with the open descriptor.

* *Replaced* (``rename`` + ``create``, logrotate's default and that of most loggers): the new file is
  opened at once, but the old one is first read to its end through the descriptor still held, and kept
  (and read) until the new file has data, since a writer goes on writing to the old file until it reopens.
  A path that disappears (renamed, not yet recreated) is handled the same way.
* *Truncated* (``copytruncate``: the file is smaller than the position, or its first bytes changed):
  reading starts again from 0. Lines written between the last poll and the copy are only in the copy; when
  it is beside the file as ``<path>.1`` (logrotate with ``delaycompress``) and its head and tail hashes prove
  it is a copy of what was read, its unread rest is read first. Otherwise they are lost (copytruncate is
  lossy by design; prefer ``create``).
* *At start*: if the file at the path has the stored inode, is at least ``pos`` long and its head matches,
  reading continues from ``pos``. Otherwise it was replaced or truncated while Vigil was down: if
  ``<path>.1`` is the stored file (same inode) or a copy of it (head and tail match), its rest is read
  first, then the current file from 0; if not, a warning says that the unread rest of the old file may be
  lost. A file never seen before is read from its start.

A path that does not exist yet is waited for (counted in :attr:`TailStats.files_waiting`); any other
error (permissions, a directory, the store) is logged when it changes, not on every poll, and retried with
a back-off of up to :data:`MAX_RETRY_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from vigil.events import deadletter
from vigil.events.batch import Result
from vigil.settings import Settings
from vigil.store.sqlite import Store, StoreError
from vigil.streams.tail_cursor import (
    HEAD_BYTES,
    TailStats,
)
from vigil.streams.tail_cursor import (
    Cursor as _Cursor,
)
from vigil.streams.tail_cursor import (
    Followed as _Followed,
)
from vigil.streams.tail_cursor import (
    Outcome as _Outcome,
)
from vigil.streams.tail_cursor import (
    nth_newline as _nth_newline,
)
from vigil.streams.tail_lines import Lines
from vigil.streams.tail_rotation import Placement

log = logging.getLogger(__name__)

#: most bytes read from one file in one step (raised to ``max_record_bytes + 1`` when that is larger)
MAX_BATCH_BYTES: Final = 8 << 20
#: most lines committed from one file in one step: also the most a crash can make the restart re-read
MAX_BATCH_LINES: Final = 5000
#: longest wait before a file that keeps failing is tried again
MAX_RETRY_SECONDS: Final = 60.0
_SCAN_CHUNK: Final = 1 << 20


class FileTail(Placement):
    """Follows the files of ``ingest.tail_files``; :meth:`run` is the asyncio task, :meth:`poll` the same
    work done synchronously (for tests and one-shot use)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        stats: TailStats | None = None,
        *,
        paths: Sequence[Path] | None = None,
    ) -> None:
        self.store = store
        self.stats = stats if stats is not None else TailStats()
        self.poll_interval = settings.ingest.poll_interval
        self._format = settings.ingest.format
        self._max_record = int(settings.ingest.max_record_bytes)
        self._max_document = int(settings.ingest.max_document_bytes)
        self._window = max(MAX_BATCH_BYTES, self._max_record + 1)
        self._lines = Lines(self._format, self._max_record, self._max_document)
        chosen = list(settings.ingest.tail_files if paths is None else paths)
        unique = list(dict.fromkeys(Path(os.path.abspath(p)) for p in chosen))
        self._files = [_Followed(p, self._lines.new()) for p in unique]
        self.stats.files = len(self._files)
        self._stop = asyncio.Event()
        #: held by a step; :meth:`close` takes it so no descriptor is closed under a running step
        self._lock = threading.Lock()

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self._files]

    # -- the task -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the step it is on (call from the event loop thread)."""
        self._stop.set()

    async def run(self, on_published: Callable[[], None] | None = None) -> None:
        """Poll every ``poll_interval`` until :meth:`stop`; never raises for I/O or store problems, only
        logs them. ``on_published`` is called, from the event loop thread, after each commit that added
        events (to wake the detect stage). The files are closed when it returns."""
        stats = self.stats
        stats.running = True
        try:
            while not self._stop.is_set():
                busy = False
                for followed in self._files:
                    if self._stop.is_set():
                        break
                    outcome = await asyncio.to_thread(self._guarded_step, followed)
                    self._apply(followed, outcome)
                    if outcome.events and on_published is not None:
                        on_published()
                    busy = busy or outcome.more
                self._round_done()
                if busy:
                    await asyncio.sleep(0)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.poll_interval)
        finally:
            stats.running = False
            self.close()

    def poll(self) -> int:
        """Step every file until none has a complete batch left (blocking); the number of events added."""
        added = 0
        busy = True
        while busy:
            busy = False
            for followed in self._files:
                outcome = self._guarded_step(followed)
                self._apply(followed, outcome)
                added += outcome.events
                busy = busy or outcome.more
        self._round_done()
        return added

    def close(self) -> None:
        """Close every open file (a later :meth:`poll` starts again from the stored offsets)."""
        with self._lock:
            for followed in self._files:
                if followed.dirty:
                    with contextlib.suppress(StoreError, OSError):
                        self._save(followed)
                followed.close()

    def _apply(self, followed: _Followed, outcome: _Outcome) -> None:
        stats = self.stats
        stats.events += outcome.events
        stats.dead_letters += outcome.dead_letters
        stats.control_records += outcome.control_records
        stats.bytes += outcome.bytes
        stats.lines += outcome.lines
        stats.rotations += outcome.rotations
        stats.truncations += outcome.truncations
        key = str(followed.path)
        if followed.error is None:
            stats.errors.pop(key, None)
        else:
            stats.errors[key] = followed.error
        reader = followed.reader
        if reader is not None:
            stats.positions[key] = reader.pos

    def _round_done(self) -> None:
        self.stats.polls += 1
        self.stats.last_poll_at = time.time()
        self.stats.files_waiting = sum(1 for f in self._files if f.waiting)

    # -- one step of one file (worker thread) -------------------------------------------------------------

    def _guarded_step(self, followed: _Followed) -> _Outcome:
        """:meth:`_step`, with every failure logged when it changes and retried with a back-off."""
        out = _Outcome()
        if time.monotonic() < followed.retry_at:
            return out
        with self._lock:
            try:
                self._step(followed, out)
            except (OSError, StoreError) as exc:
                self._failed(followed, str(exc))
                return out
            except Exception as exc:  # a bug: log it, back off, never kill the source
                log.exception("%s: unexpected error", followed.path)
                self._failed(followed, f"internal error: {type(exc).__name__}: {exc}", logged=True)
                return out
        if followed.error is not None:
            log.info("%s: readable again", followed.path)
            followed.error = None
        followed.retry_at, followed.delay = 0.0, 0.0
        return out

    def _failed(self, followed: _Followed, message: str, *, logged: bool = False) -> None:
        if not logged:
            level = logging.DEBUG if message == followed.error else logging.ERROR
            log.log(level, "%s: %s (retrying)", followed.path, message)
        followed.error = message
        followed.delay = min(max(followed.delay * 2, self.poll_interval), MAX_RETRY_SECONDS)
        followed.retry_at = time.monotonic() + followed.delay

    def _step(self, followed: _Followed, out: _Outcome) -> None:
        if followed.dirty:
            self._save(followed)
        if not followed.started:
            self._start(followed)
        else:
            self._check(followed, out)
        reader = followed.reader
        followed.waiting = reader is None
        if reader is None:
            return
        self._read(followed, reader, out)
        if followed.behind and not out.more and self._finished(followed, reader):
            before = reader.pos
            self._read(followed, reader, out)  # lines that arrived meanwhile
            if reader.pos == before and not out.more:
                self._drop_behind(followed, reader, out)
            out.more = True

    # -- reading and committing ---------------------------------------------------------------------------

    def _read(self, followed: _Followed, reader: _Cursor, out: _Outcome) -> None:
        """Read, normalise and commit one batch of complete lines from ``reader``."""
        if reader.scan:
            self._skip(followed, reader, out)
            return
        available = reader.size() - reader.pos
        if available <= 0:
            return
        data = os.pread(reader.fd, min(available, self._window), reader.pos)
        if not data:
            return
        full = len(data) == self._window
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) > self._max_record:  # an over-long line: find its end without holding it
                reader.scan, reader.skip_head = reader.pos + len(data), data[:HEAD_BYTES]
                self._skip(followed, reader, out)
            return  # else a partial last line: wait for its newline
        cut = end + 1
        lines = data.count(b"\n", 0, cut)
        if lines > MAX_BATCH_LINES:
            cut = _nth_newline(data, MAX_BATCH_LINES) + 1
            lines = MAX_BATCH_LINES
        chunk = data[:cut] if cut < len(data) else data
        del data
        result = self._lines.normalise(followed, chunk, reader.line, reader.pos)
        self._commit(followed, reader, result, reader.pos + cut, lines, out, chunk)
        out.more = full or lines == MAX_BATCH_LINES

    def _skip(self, followed: _Followed, reader: _Cursor, out: _Outcome) -> None:
        """Look for the newline ending an over-long line; at it, dead-letter the line and commit."""
        budget = self._window
        while budget > 0:
            data = os.pread(reader.fd, min(_SCAN_CHUNK, budget), reader.scan)
            if not data:
                return  # not complete yet
            nl = data.find(b"\n")
            if nl >= 0:
                end = reader.scan + nl + 1
                result = Result()
                result.dead.append(
                    deadletter.for_oversize(
                        followed.name,
                        reader.line + 1,
                        reader.pos,
                        reader.skip_head,
                        end - reader.pos,
                        self._max_record,
                    )
                )
                self._commit(followed, reader, result, end, 1, out, None)
                out.more = True
                return
            reader.scan += len(data)
            budget -= len(data)
        out.more = True

    def _commit(
        self,
        followed: _Followed,
        reader: _Cursor,
        result: Result,
        end: int,
        lines: int,
        out: _Outcome,
        data: bytes | None,
    ) -> None:
        """Store the batch (``data``: its bytes, when held) and the new offset in one transaction: a crash
        keeps both or neither, so no line is read twice or lost."""
        before = reader.mark()
        reader.advance(end, lines, data)
        state = json.dumps(reader.state(), separators=(",", ":"))
        try:
            self.store.accept(result.events, result.dead, followed.name, offset=(followed.name, state))
        except BaseException:
            reader.restore(before)  # nothing was stored: the same bytes are read again next step
            raise
        out.add(result, end - before[0], lines)
        followed.dirty = False
        if result.dead:
            log.warning("%s: %d lines dead-lettered", followed.path, len(result.dead))

    # -- offsets ------------------------------------------------------------------------------------------

    def _save(self, followed: _Followed) -> None:
        reader = followed.reader
        if reader is not None:
            self.store.set_offset(followed.name, json.dumps(reader.state(), separators=(",", ":")))
        followed.dirty = False

    def _load(self, followed: _Followed) -> dict[str, Any] | None:
        value = self.store.offset(followed.name)
        if value is None:
            return None
        try:
            saved = json.loads(value)
            ok = (
                isinstance(saved, dict)
                and all(type(saved.get(k)) is int and saved[k] >= 0 for k in ("pos", "inode"))
                and type(saved.get("line", 0)) is int
                and isinstance(saved.get("head"), str)
            )
        except ValueError:
            ok = False
        if not ok:
            log.warning("%s: stored offset %r is unreadable; reading from the start", followed.path, value)
            return None
        result: dict[str, Any] = saved
        return result


__all__ = ["FileTail", "TailStats"]

"""Where a file tail reads from: the start of a followed path, and what to do when it was rotated.

A mixin of :class:`~vigil.streams.tail.FileTail`, kept apart so the reading loop and the rotation rules
each fit on a screen. At the start the stored offset decides (same inode and head: continue; else the
rotated copy ``<path>.1`` if it provably holds the unread rest; else from the beginning, with a warning).
At each step :meth:`Placement._check` compares the path with the open descriptor: a replaced file is
finished through the old descriptor before the new one is read; a truncated one (copytruncate) restarts
at 0 after reading what the copy kept. The rules are in the module docstring of :mod:`vigil.streams.tail`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from vigil.events import deadletter
from vigil.events.batch import Result
from vigil.streams.tail_cursor import HEAD_BYTES, Cursor, Followed, Outcome, open_cursor, sha256_hex

log = logging.getLogger("vigil.streams.tail")


class Placement:
    """The start and rotation logic of a file tail (see module docstring)."""

    #: set by FileTail
    _max_record: int

    def _commit(
        self,
        followed: Followed,
        reader: Cursor,
        result: Result,
        end: int,
        lines: int,
        out: Outcome,
        data: bytes | None,
    ) -> None:
        raise NotImplementedError

    def _save(self, followed: Followed) -> None:
        raise NotImplementedError

    def _load(self, followed: Followed) -> dict[str, Any] | None:
        raise NotImplementedError

    # -- where to read ------------------------------------------------------------------------------------

    def _start(self, followed: Followed) -> None:
        """Open the path and decide where to read from, using the stored offset (see module docstring)."""
        saved = self._load(followed)
        cur = open_cursor(followed.path)
        try:
            self._resume(followed, saved, cur)
        except BaseException:
            if cur is not None and followed.cur is not cur:
                cur.close()
            raise

    def _resume(self, followed: Followed, saved: dict[str, Any] | None, cur: Cursor | None) -> None:
        if saved is None:
            followed.cur, followed.started = cur, cur is not None
            if cur is None:
                self._note_waiting(followed)
            return
        pos = int(saved["pos"])
        if cur is not None and cur.ino == saved["inode"] and cur.size() >= pos:
            cur.place(pos, int(saved.get("line", 0)))
            if sha256_hex(cur.head_bytes) == saved["head"]:
                followed.cur, followed.started = cur, True
                log.info("%s: resuming at byte %d", followed.path, pos)
                return
            cur.place(0, 0)
        previous = self._find_rotated(followed, saved)
        if previous is None and cur is None:  # nothing to read yet: keep the offset for when it appears
            self._note_waiting(followed)
            return
        followed.cur, followed.started = cur, True
        if previous is not None:
            followed.behind.append(previous)
            log.info(
                "%s: changed while Vigil was down; reading the rest of the previous file from %s at byte %d",
                followed.path,
                followed.rotated_path,
                pos,
            )
        else:
            log.warning(
                "%s: replaced or truncated while Vigil was down, and %s is not the file read before; "
                "reading from the start, the unread rest of the previous file (after byte %d) may be lost",
                followed.path,
                followed.rotated_path,
                pos,
            )
        followed.dirty = True
        self._save(followed)

    def _check(self, followed: Followed, out: Outcome) -> None:
        """Notice a replaced, vanished or truncated file, or one that appeared."""
        cur = followed.cur
        if cur is None:
            cur = open_cursor(followed.path)
            if cur is None:
                if not followed.behind:
                    self._note_waiting(followed)
                return
            for i, older in enumerate(followed.behind):  # renamed back: it is the same file
                if (older.dev, older.ino) == (cur.dev, cur.ino):
                    cur.close()
                    cur = followed.behind.pop(i)
                    break
            else:
                log.info("%s: appeared; reading it from the start", followed.path)
            followed.cur = cur
            return
        try:
            st = os.stat(followed.path)
        except FileNotFoundError:
            log.info("%s: gone (rotated?); finishing the open file and waiting for a new one", followed.path)
            followed.behind.append(cur)
            followed.cur = None
            out.rotations += 1
            return
        if (st.st_dev, st.st_ino) != (cur.dev, cur.ino):
            log.info("%s: replaced (rotated); finishing the old file first", followed.path)
            followed.behind.append(cur)
            followed.cur = None
            out.rotations += 1
            followed.cur = open_cursor(followed.path)
            return
        if cur.pos == 0:
            return
        if cur.size() >= cur.pos and os.pread(cur.fd, len(cur.head_bytes), 0) == cur.head_bytes:
            return
        out.truncations += 1
        copy = self._find_rotated(followed, cur.state(), copy_only=True)
        if copy is not None:
            log.info(
                "%s: truncated (copytruncate); reading the lines after byte %d from %s first",
                followed.path,
                cur.pos,
                followed.rotated_path,
            )
            followed.behind.append(copy)
        else:
            log.warning(
                "%s: truncated (copytruncate?) at byte %d; reading from the start. Lines written after the "
                "last poll and before the truncation are lost unless kept as %s",
                followed.path,
                cur.pos,
                followed.rotated_path,
            )
        cur.place(0, 0)
        followed.dirty = True
        self._save(followed)

    def _find_rotated(
        self, followed: Followed, saved: dict[str, Any], *, copy_only: bool = False
    ) -> Cursor | None:
        """``<path>.1`` opened at the saved position, if it is the saved file (same inode) or a copy of it
        (its first bytes and the bytes before the position hash the same); else None."""
        pos = int(saved["pos"])
        candidate = open_cursor(followed.rotated_path, rotated=True)
        if candidate is None:
            return None
        same = not copy_only and candidate.ino == saved["inode"]
        try:
            ok = candidate.size() >= pos
            if ok:
                candidate.place(pos, int(saved.get("line", 0)))
                ok = sha256_hex(candidate.head_bytes) == saved["head"]
                if ok and not same:  # a copy: what was read must be its start, head and tail alike
                    ok = pos > 0 and sha256_hex(candidate.tail_bytes) == saved.get("tail")
        except BaseException:
            candidate.close()
            raise
        if not ok:
            candidate.close()
            return None
        return candidate

    def _finished(self, followed: Followed, reader: Cursor) -> bool:
        """Whether an older file at its end can be let go: a rotated copy, or a replaced file once something
        newer has data (until then its writer may still be writing to it) or once it is deleted."""
        if reader.rotated or len(followed.behind) > 1:
            return True
        st = os.fstat(reader.fd)
        if st.st_nlink == 0:
            return True
        return followed.cur is not None and followed.cur.size() > 0

    def _drop_behind(self, followed: Followed, reader: Cursor, out: Outcome) -> None:
        """Let go of a finished older file; an incomplete last line in it is dead-lettered."""
        size = reader.size()
        if size > reader.pos and reader.scan == 0:
            length = size - reader.pos
            data = os.pread(reader.fd, min(length, self._max_record), reader.pos)
            reason = "incomplete last line of a rotated file (no newline)"
            if length > self._max_record:
                dead = deadletter.for_oversize(
                    followed.name, reader.line + 1, reader.pos, data[:HEAD_BYTES], length, self._max_record
                )
            else:
                dead = deadletter.for_bad_bytes(followed.name, reader.line + 1, reader.pos, data, reason)
            result = Result()
            result.dead.append(dead)
            self._commit(followed, reader, result, size, 1, out, None)
        elif reader.scan:
            head = reader.skip_head
            dead = deadletter.for_oversize(
                followed.name, reader.line + 1, reader.pos, head, size - reader.pos, self._max_record
            )
            result = Result()
            result.dead.append(dead)
            self._commit(followed, reader, result, size, 1, out, None)
        followed.behind.remove(reader)
        reader.close()
        log.info("%s: finished the previous file at byte %d", followed.path, reader.pos)
        followed.dirty = True
        self._save(followed)

    def _note_waiting(self, followed: Followed) -> None:
        if not followed.waiting:
            log.info("%s: does not exist yet; waiting for it", followed.path)
        followed.waiting = True

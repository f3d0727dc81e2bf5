"""Normalising the complete lines a file tail read, without losing good lines to bad ones.

A followed file is JSON Lines, but the batch reader would take a batch whose first line starts a JSON value
for a multi-line document; such a first line is normalised on its own, so one broken ``{`` line never
dead-letters the good lines after it. A normalizer that fails unexpectedly on a batch (a bug) is replaced
and the batch is normalised line by line, so only the culprit is lost — as a dead letter with its line and
byte offset in the file, like every other dead letter here.
"""

from __future__ import annotations

import logging

from vigil.events import deadletter
from vigil.events.batch import BatchNormalizer, Result
from vigil.streams.tail_cursor import Followed, parses, place

log = logging.getLogger("vigil.streams.tail")


class Lines:
    """The normalisation of one tail: its format and size caps."""

    def __init__(self, fmt: str, max_record: int, max_document: int) -> None:
        self._format = fmt
        self._max_record = max_record
        self._max_document = max_document

    def normalise(self, followed: Followed, chunk: bytes, line: int, offset: int) -> Result:
        """Normalise complete lines; dead letters get the line number and byte offset in the file.

        The reader takes a stream whose first line starts a JSON value but does not parse for a multi-line
        document; a followed file is JSON Lines, so such a first line is normalised on its own.
        """
        total = Result()
        start = 0
        while start < len(chunk):
            stop = len(chunk)
            first_end = start
            while first_end < stop:  # the first non-blank line
                nl = chunk.index(b"\n", first_end) + 1
                if not chunk[first_end:nl].isspace():
                    break
                first_end = nl
            if first_end < stop:
                nl = chunk.index(b"\n", first_end) + 1
                first = chunk[first_end:nl]
                if (
                    len(first) <= self._max_record
                    and first.lstrip()[:1] in (b"{", b"[")
                    and not parses(first)
                ):
                    stop = nl
            piece = chunk[start:stop]
            part = self._body(followed, piece, line, offset + start)
            total.events += part.events
            total.controls += part.controls
            total.dead += part.dead
            line += piece.count(b"\n")
            start = stop
        return total

    def _body(self, followed: Followed, piece: bytes, line: int, offset: int) -> Result:
        try:
            result = followed.normalizer.body(piece, followed.name)
        except Exception as exc:  # a bug on this input: go line by line so only the culprit is lost
            log.error("%s: unexpected error while normalising", followed.path, exc_info=exc)
            followed.normalizer = self.new()
            return self._line_by_line(followed, piece, line, offset)
        result.dead = [place(dl, line, offset) for dl in result.dead]
        return result

    def _line_by_line(self, followed: Followed, piece: bytes, line: int, offset: int) -> Result:
        total = Result()
        pos = 0
        for data in piece.splitlines(keepends=True):
            line += 1
            try:
                part = followed.normalizer.body(data, followed.name)
            except Exception as exc:
                followed.normalizer = self.new()
                reason = f"internal error: {type(exc).__name__}: {exc}"
                total.dead.append(
                    deadletter.for_bad_bytes(followed.name, line, offset + pos, data.rstrip(b"\r\n"), reason)
                )
            else:
                total.events += part.events
                total.controls += part.controls
                total.dead += [place(dl, line - 1, offset + pos) for dl in part.dead]
            pos += len(data)
        return total

    def new(self) -> BatchNormalizer:
        return BatchNormalizer(
            self._format, max_record_bytes=self._max_record, max_document_bytes=self._max_document
        )

"""Dead letters: records that could not be normalised, kept with where they came from and why.

Nothing is dropped silently. A dead letter names the source (file or ``-``), the line and byte offset, the
path inside the line's JSON value (``records[17]``), the normalizer that tried, and the reason. It keeps the
record itself when it was valid JSON, the text when it was valid UTF-8, and the bytes (base64) otherwise,
so that it can be fixed and replayed. Only a line over the size cap is kept as an excerpt plus its offset
and length, because holding it is exactly what the cap exists to prevent.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import IO, Any, Final

import msgspec

from vigil.events.model import Event, encode_event

EXCERPT_BYTES: Final = 256


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One record that did not become an event."""

    source: str
    reason: str
    line: int | None = None
    offset: int | None = None
    index: str | None = None
    format: str | None = None
    record: Any = None
    text: str | None = None
    data_b64: str | None = None
    excerpt: str | None = None
    length: int | None = None
    at: datetime | None = None

    def location(self) -> str:
        """``file:line [index]`` for human-readable messages."""
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
        if self.index:
            where += f" {self.index}"
        return where


def for_bad_bytes(source: str, line: int, offset: int, data: bytes, reason: str) -> DeadLetter:
    """A line that is not valid JSON: keep it as text if it is UTF-8, as base64 otherwise."""
    try:
        text: str | None = data.decode("utf-8")
        b64 = None
    except UnicodeDecodeError:
        text = None
        b64 = base64.b64encode(data).decode("ascii")
    return DeadLetter(
        source=source,
        line=line,
        offset=offset,
        reason=reason,
        text=text,
        data_b64=b64,
        length=len(data),
        at=datetime.now(UTC),
    )


def for_oversize(source: str, line: int, offset: int, head: bytes, length: int, cap: int) -> DeadLetter:
    """A line longer than the cap: keep an excerpt and where it is, not the bytes."""
    return DeadLetter(
        source=source,
        line=line,
        offset=offset,
        reason=f"record of {length} bytes exceeds max_record_bytes ({cap})",
        excerpt=head[:EXCERPT_BYTES].decode("utf-8", "replace"),
        length=length,
        at=datetime.now(UTC),
    )


def for_failed_event(source: str, event: Event, exc: BaseException, index: str | None = None) -> DeadLetter:
    """An event that normalised but could not be detected on: a bug that would otherwise stop the stream
    on the same event at every retry (reliability A11). It keeps the canonical event (``record``), so it
    can be replayed once the cause is fixed. ``at`` is left out: detection is deterministic, so processing
    the same event again after a restart gives the same letter, which the store keeps once."""
    reason = f"detection failed: {type(exc).__name__}: {exc}"
    return DeadLetter(
        source=source, reason=reason[:1000], index=index, record=msgspec.json.decode(encode_event(event))
    )


class DeadLetterWriter:
    """Appends dead letters as JSON Lines to a binary stream (a file or stderr) and counts them."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._encoder = msgspec.json.Encoder()
        self.count = 0

    def write(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        buf = bytearray()
        for dl in letters:
            self._encoder.encode_into(dl, buf, len(buf))
            buf += b"\n"
        self._stream.write(bytes(buf))
        self._stream.flush()
        self.count += len(letters)

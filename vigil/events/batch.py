"""The in-process normalisation path: bytes in, canonical events, control records and dead letters out.

``vigil normalize``, the drop-folder source of ``vigil run`` and (later) the HTTP ingestion endpoints all
go through :class:`BatchNormalizer`, so a record is judged the same way whichever door it came in by.

Every JSON value is expanded the same way: a ``{"records": [...]}`` envelope (Event Hubs, diagnostic
settings, Log Analytics export) yields its records; an array (Event Grid batches) yields its elements, each of
which may itself be an envelope; an object is one record. A bad record never spoils its batch: it is
dead-lettered with its index (``records[17]``) and the rest come through.

JSON Lines input first tries the dispatcher's fast normalizer (the Activity Log's typed decoder, see
``normalizers/activity.py``) on each line's bytes; records it does not take go the general way (``orjson``
to dicts, then auto-detection). After a run of misses the fast path is switched off until the general path
sees a record of its format again, so other formats do not pay for it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, Final

import msgspec
import orjson

from vigil.errors import NormalizeError
from vigil.events import deadletter
from vigil.events.deadletter import DeadLetter
from vigil.events.model import Control, Event
from vigil.events.normalize import Dispatcher, FastResult
from vigil.events.reader import NOT_PARSED, Item, read_items

DEFAULT_MAX_RECORD_BYTES: Final = 4 << 20
DEFAULT_MAX_DOCUMENT_BYTES: Final = 64 << 20
_FAST_MISS_LIMIT: Final = 16


class Result:
    """What one batch of input produced."""

    __slots__ = ("controls", "dead", "events")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.controls: list[Control] = []
        self.dead: list[DeadLetter] = []

    def __len__(self) -> int:
        return len(self.events) + len(self.controls) + len(self.dead)


class BatchNormalizer:
    """Turns input bytes into :class:`Result` batches; one instance per input stream or worker."""

    def __init__(
        self,
        fmt: str = "auto",
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    ) -> None:
        self.dispatcher = Dispatcher(fmt)
        self._fast = self.dispatcher.fast
        self._fast_on = self._fast is not None
        self._fast_misses = 0
        self.max_record_bytes = max_record_bytes
        self.max_document_bytes = max_document_bytes

    # -- whole inputs -------------------------------------------------------------------------------------

    def stream(self, fh: IO[bytes], source: str, batch_size: int = 2048) -> Iterator[Result]:
        """Normalise a whole stream, yielding a :class:`Result` every ``batch_size`` input lines."""
        out = Result()
        events = out.events
        pending = 0
        line = 0
        offset = 0
        fast_from_json = self._fast.from_json if self._fast is not None else None
        for item in read_items(
            fh, max_record_bytes=self.max_record_bytes, max_document_bytes=self.max_document_bytes
        ):
            if type(item) is bytes:
                line += 1
                start = offset
                offset += len(item)
                # The hot path: one call into the fast normalizer, straight from the line's bytes.
                if self._fast_on:
                    event = fast_from_json(item.rstrip())  # type: ignore[misc]
                    if type(event) is Event:
                        events.append(event)
                    else:
                        self._feed_line(item, event, source, line, start, out)
                else:
                    self._feed_line(item, None, source, line, start, out)
            else:
                assert isinstance(item, Item)
                line = item.line
                offset = item.offset + item.length
                self.feed_item(item, source, out)
            pending += 1
            if pending >= batch_size:
                yield out
                out = Result()
                events = out.events
                pending = 0
        if len(out):
            yield out

    def body(self, data: bytes, source: str) -> Result:
        """Normalise one request body or file held in memory (JSON document or JSON Lines)."""
        if self._fast_on and len(data) <= self.max_record_bytes:
            lines = self._lines(data, source)
            if lines is not None:
                return lines
        out = Result()
        for part in self.stream(io.BytesIO(data), source, batch_size=1 << 30):
            out.events += part.events
            out.controls += part.controls
            out.dead += part.dead
        return out

    def _lines(self, data: bytes, source: str) -> Result | None:
        """:meth:`body` for JSON Lines whose first line the fast normalizer takes as a record, which settles
        that the input is JSON Lines (what :func:`read_items` decides from its first line), else None
        before any other work. The lines are split in one call: the stream path reads and copies each line
        twice and passes it through two generators, about 2 us of a 1.5 KB record's budget. Only for input
        no longer than ``max_record_bytes``, where no line can be over-long. Results, line numbers and
        offsets are those of the stream path (``tests/events/test_batch_lines.py`` compares them)."""
        if self._fast is None:
            return None
        fast = self._fast.from_json
        end = data.find(b"\n")
        first = fast(data[: end if end >= 0 else len(data)].rstrip())
        if type(first) is not Event:
            return None  # (before splitting: other formats and documents pay one line's look, no more)
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # (a final newline ends the last line; it starts none)
        out = Result()
        events = out.events
        events.append(first)
        offset = len(lines[0]) + 1
        last = len(lines)
        ended = data.endswith(b"\n")
        for number, line in enumerate(lines[1:], 2):  # (physical line numbers count from 1)
            start = offset
            offset += len(line) + 1
            event: FastResult = None
            if self._fast_on:
                event = fast(line.rstrip())
                if type(event) is Event:
                    events.append(event)
                    continue
            physical = line + b"\n" if number < last or ended else line
            self._feed_line(physical, event, source, number, start, out)
        return out

    # -- pieces -------------------------------------------------------------------------------------------

    def _feed_line(
        self, data: bytes, fast: FastResult, source: str, line: int, offset: int, out: Result
    ) -> None:
        """A line the fast path did not turn into an event: an envelope it split, or a general record."""
        if type(fast) is list:
            self._fast_envelope(fast, source, line, offset, out)
            return
        if data.isspace():
            return
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            reason = f"invalid JSON: {exc}"
            out.dead.append(deadletter.for_bad_bytes(source, line, offset, data.rstrip(b"\r\n"), reason))
            return
        self.feed_value(value, source, line, offset, out)
        self._track_fast(self.dispatcher.last_format)

    def _fast_envelope(
        self, records: list[msgspec.Raw], source: str, line: int, offset: int, out: Result
    ) -> None:
        fast = self._fast
        assert fast is not None
        for i, raw in enumerate(records):
            event = fast.from_json(raw)
            if type(event) is Event:
                out.events.append(event)
            else:
                self._one(orjson.loads(memoryview(raw)), source, line, offset, "records", i, out)
                self._track_fast(self.dispatcher.last_format)

    def _track_fast(self, fmt: str | None) -> None:
        """Switch the fast path off after a run of records of other formats, on again when one is seen."""
        if self._fast is None:
            return
        if fmt == self._fast.name:
            self._fast_on = True
            self._fast_misses = 0
        elif fmt is not None and self._fast_on:
            self._fast_misses += 1
            if self._fast_misses >= _FAST_MISS_LIMIT:
                self._fast_on = False

    def feed_item(self, item: Item, source: str, out: Result) -> None:
        """Normalise one reader :class:`Item`: a parsed document, or an over-long line or document."""
        if item.value is not NOT_PARSED:
            self.feed_value(item.value, source, item.line, item.offset, out)
            return
        if item.too_large_document:
            out.dead.append(
                DeadLetter(
                    source=source,
                    line=item.line,
                    offset=item.offset,
                    reason=(
                        f"JSON document of {item.length} bytes exceeds max_document_bytes "
                        f"({self.max_document_bytes}); send it as JSON Lines"
                    ),
                    excerpt=item.head[: deadletter.EXCERPT_BYTES].decode("utf-8", "replace"),
                    length=item.length,
                    at=datetime.now(UTC),
                )
            )
            return
        out.dead.append(
            deadletter.for_oversize(
                source, item.line, item.offset, item.head, item.length, self.max_record_bytes
            )
        )

    def feed_value(self, value: Any, source: str, line: int, offset: int, out: Result) -> None:
        """Expand one decoded JSON value (envelope, array or object) and normalise its records."""
        if type(value) is dict:
            records = value.get("records")
            if records is None or "records" not in value:
                self._one(value, source, line, offset, "", -1, out)
            elif type(records) is list:
                for i, rec in enumerate(records):
                    self._one(rec, source, line, offset, "records", i, out)
            else:
                self.dispatcher.last_format = None
                self._dead(
                    value, source, line, offset, None, "records envelope: 'records' is not an array", out
                )
        elif type(value) is list:
            for i, element in enumerate(value):
                if type(element) is dict and type(element.get("records")) is list:
                    for j, rec in enumerate(element["records"]):
                        self._one(rec, source, line, offset, f"[{i}].records", j, out)
                else:
                    self._one(element, source, line, offset, "", i, out)
        else:
            self._one(value, source, line, offset, "", -1, out)

    def _one(self, rec: Any, source: str, line: int, offset: int, prefix: str, i: int, out: Result) -> None:
        try:
            result = self.dispatcher.normalize(rec)
        except NormalizeError as exc:
            index = f"{prefix}[{i}]" if i >= 0 else (prefix or None)
            self._dead(rec, source, line, offset, index, exc.reason, out)
            return
        if type(result) is Event:
            out.events.append(result)
        else:
            out.controls.append(result)  # type: ignore[arg-type]

    def _dead(
        self, rec: Any, source: str, line: int, offset: int, index: str | None, reason: str, out: Result
    ) -> None:
        out.dead.append(
            DeadLetter(
                source=source,
                line=line,
                offset=offset,
                index=index,
                format=self.dispatcher.last_format,
                reason=reason,
                record=rec,
                at=datetime.now(UTC),
            )
        )

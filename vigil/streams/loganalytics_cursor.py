"""The Log Analytics poller's cursor: a high-water mark plus the rows already taken near it.

Kept apart from :mod:`vigil.streams.loganalytics`, which decides what to query and when, because the
cursor is the part that must be right across restarts: it is stored as JSON in the store's offsets, in
the same transaction as the events it covers, so a crash keeps both or neither.

**Watermark.** The largest ``ingestion_time()`` taken so far. Ingestion time, not ``TimeGenerated``:
``TimeGenerated`` is when the alerting product produced the row, and rows routinely arrive minutes (up to
hours) after it, behind a watermark on ``TimeGenerated``; the time a row became queryable only grows
(reference/azure.md §5.4). The next query asks for rows ingested after ``watermark - overlap``: the overlap
catches rows whose ingestion committed out of order around the last poll.

**Seen.** Rows of the overlap are read twice; :attr:`Cursor.seen` remembers each taken row by its identity
and version (``SystemAlertId`` and ``TimeGenerated`` for alerts, ``IncidentName`` and ``LastModifiedTime``
for incidents: a status change is a new version and comes through), with its ingestion time, so the
re-read is recognised without touching the store. Entries older than ``watermark - overlap`` can no longer
be re-read and are dropped; past ``max_seen`` entries the oldest go first. An entry dropped early costs
nothing but a second look: the store keeps events by their id, so the row is still stored once.

**Full pages.** A query takes at most ``page`` rows, oldest ingestion first. When a page came back full,
the next query starts *at* the watermark (inclusive, no overlap), so a backlog larger than the overlap is
worked through page by page instead of re-reading the same window forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson


def iso(when: datetime) -> str:
    """UTC ISO-8601 with microseconds and ``Z``: the form used in queries, the cursor and event rows."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class Cursor:
    """Where the next poll of one table starts (see the module docstring)."""

    watermark: datetime | None = None
    #: "key|version" -> ingestion time (ISO) of the rows taken within the overlap
    seen: dict[str, str] = field(default_factory=dict)
    #: the last page was full: start the next query at the watermark, without the overlap
    full: bool = False

    def lower_bound(
        self, now: datetime, overlap: timedelta, first_lookback: timedelta
    ) -> tuple[datetime, bool]:
        """(start, inclusive) of the next query's ``ingestion_time()`` filter."""
        if self.watermark is None:
            return now - first_lookback, False
        if self.full:
            return self.watermark, True
        return self.watermark - overlap, False

    def advance(self, taken: list[tuple[str, datetime]], newest: datetime | None, full: bool) -> None:
        """Remember ``taken`` (identity, ingestion time) and move the watermark to ``newest``."""
        for key, ingested in taken:
            self.seen[key] = iso(ingested)
        if newest is not None and (self.watermark is None or newest > self.watermark):
            self.watermark = newest
        self.full = full

    def prune(self, overlap: timedelta, max_seen: int) -> int:
        """Drop what can no longer be re-read, then the oldest past ``max_seen``; the number dropped."""
        before = len(self.seen)
        if self.watermark is not None:
            cut = iso(self.watermark - overlap)
            self.seen = {k: v for k, v in self.seen.items() if v >= cut}
        if len(self.seen) > max_seen:
            keep = sorted(self.seen.items(), key=lambda kv: kv[1])[-max_seen:]
            self.seen = dict(keep)
        return before - len(self.seen)

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "watermark": iso(self.watermark) if self.watermark else None,
                "seen": self.seen,
                "full": self.full,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str | None) -> Cursor:
        """The stored cursor; an absent one is a fresh cursor, an unreadable one a :class:`ValueError`."""
        if text is None:
            return cls()
        try:
            data: Any = orjson.loads(text)
            mark = data.get("watermark")
            seen = data.get("seen", {})
            if not isinstance(seen, dict) or not all(isinstance(v, str) for v in seen.values()):
                raise ValueError("seen is not an object of strings")
            return cls(parse_iso(mark) if mark else None, dict(seen), bool(data.get("full", False)))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"stored Log Analytics cursor is unreadable: {exc}") from None


__all__ = ["Cursor", "iso", "parse_iso"]

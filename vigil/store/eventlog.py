"""The event log in the store: one row per accepted batch, one small row per event id.

Why batches: the log used to hold a row per event (its canonical JSON, about 2.3 KB for an Activity Log
record, under three indexes). On this 2-core VM that cost about 25 µs of the ingesting thread per event and
3.3 KB of disk writes per event (WAL and checkpoint), all of it under the store's one write lock, and the
ingestion benchmark spent most of its wall time queued on that lock. Now a request's batch is one row
(``event_batches``) whose body is either

- ``raw``: the bytes the source sent, with the normaliser's settings (format, size limits) in ``params``,
  for a source whose events are exactly what normalising those bytes gives (HTTP ingestion); nothing is
  encoded and about 1.6 KB per event is written; or
- ``events``: the canonical events as JSON Lines (every other source, and a batch some step changed after
  normalising, such as the telemetry signature check).

Identity and order live in ``event_ids``: one row per new event (its sequence number and id, under a unique
index on the id), so a re-delivered record is still recognised and stored once, and sequence numbers are
exactly what they were. A batch covers the sequence numbers ``first`` ... ``last`` of the ids inserted with
it. Reading a batch back decodes (or normalises again) its body and gives each event the sequence number its
id has in that range: a duplicate (its id belongs to an earlier batch, or repeats inside this one) and an
event pruned by retention have none there and are skipped. Normalising is deterministic (ids are derived from
the record; nothing depends on the clock), so the same bytes give the same events; should a Vigil upgrade
have changed how a stored, not yet processed record normalises, the ids that no longer appear are logged
and counted (:data:`MISSING`) rather than silently lost.

Read-back is rare: the detect stage takes accepted events from memory (``DetectStage.offer``); the store is
read after a restart, when that hand-over overflowed, and by the response stage for one event by id.

The functions take the connection of a transaction the caller holds (:class:`~vigil.store.sqlite.Store`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import orjson

from vigil.events.batch import BatchNormalizer
from vigil.events.model import Event, encode_events, event_from_mapping

log = logging.getLogger(__name__)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS event_ids (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS event_ids_id ON event_ids(id);
CREATE TABLE IF NOT EXISTS event_batches (
    last INTEGER PRIMARY KEY, first INTEGER NOT NULL, source TEXT NOT NULL, received_ms INTEGER NOT NULL,
    form TEXT NOT NULL, params TEXT, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS event_batches_received ON event_batches(received_ms);
"""
#: ids of a batch that re-reading its body no longer produced (see the module docstring); process-wide
MISSING: list[int] = [0]
_INSERT_IDS: Final = "INSERT OR IGNORE INTO event_ids (id) SELECT value FROM json_each(?1)"


class StoredEvent(NamedTuple):
    """An event of the log with its sequence number. A named tuple, not a frozen dataclass: the detect
    stage makes one per event, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field)
    took 2 % of the daemon's GIL time."""

    seq: int
    event: Event


@dataclass(frozen=True, slots=True)
class RawBody:
    """The bytes a batch's events were normalised from, and how: the batch can be stored as these bytes
    (form ``raw``) instead of its encoded events, provided nothing changed the events after normalising."""

    body: bytes
    format: str
    max_record_bytes: int
    max_document_bytes: int

    def params(self) -> str:
        return orjson.dumps(
            {
                "format": self.format,
                "max_record_bytes": self.max_record_bytes,
                "max_document_bytes": self.max_document_bytes,
            }
        ).decode()


@dataclass(frozen=True, slots=True)
class Pending:
    """A batch ready to insert, built before the write lock is taken (JSON and encoding need no lock): its
    events' ids in order, as a list and as the JSON array the insert reads, and its body."""

    ids: list[str]
    ids_json: bytes
    form: str
    params: str | None
    body: bytes


def pending(events: Sequence[Event], raw: RawBody | None) -> Pending | None:
    """What :func:`insert` writes for ``events`` (None for none): the raw body when given, else JSON Lines."""
    if not events:
        return None
    ids = [e.id for e in events]
    if raw is not None:
        return Pending(ids, orjson.dumps(ids), "raw", raw.params(), raw.body)
    return lines(ids, encode_events(list(events)))


def lines(ids: list[str], body: bytes) -> Pending:
    """A batch of canonical events as JSON Lines (``body``), with their ids in order."""
    return Pending(ids, orjson.dumps(ids), "events", None, body)


def insert(db: sqlite3.Connection, batch: Pending, source: str, now: int) -> list[int]:
    """Insert (inside a transaction) the ids of the batch's events the log does not hold yet and, if any
    was new, the batch; the sequence numbers, aligned with ``batch.ids``, 0 for a duplicate.

    One statement for the ids (SQLite's ``json_each``; see :mod:`vigil.store.bulk` for why). With no
    duplicate the new rows number consecutively (the transaction holds the write lock); only a batch with
    duplicates needs a look-up, since an ignored row may still have used up a sequence number."""
    ids = batch.ids
    cur = db.execute(_INSERT_IDS, (batch.ids_json,))
    added, last = cur.rowcount, int(cur.lastrowid or 0)
    if not added:
        return [0] * len(ids)
    if added == len(ids):
        seqs = list(range(last - added + 1, last + 1))
    else:
        newest = db.execute("SELECT id, seq FROM event_ids ORDER BY seq DESC LIMIT ?", (added,))
        new: dict[str, int] = dict(newest.fetchall())
        seqs = [new.pop(i, 0) for i in ids]
        last = max(seqs)
    first = min(s for s in seqs if s)
    db.execute(
        "INSERT INTO event_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
        (last, first, source, now, batch.form, batch.params, batch.body),
    )
    return seqs


def read(db: sqlite3.Connection, after: int, limit: int) -> list[StoredEvent]:
    """Up to ``limit`` events with ``seq > after``, oldest first."""
    out: list[StoredEvent] = []
    rows = db.execute(
        "SELECT last, first, form, params, body FROM event_batches WHERE last > ? ORDER BY last", (after,)
    )
    for last, first, form, params, body in rows:
        out += _batch(db, max(first, after + 1), last, form, params, body)
        if len(out) >= limit:
            break
    return out[:limit]


def lookup(
    db: sqlite3.Connection, event_id: str, cache: dict[int, dict[int, Event]] | None = None
) -> Event | None:
    """The stored event with this id, or None (never stored, or pruned by retention).

    ``cache`` (the caller's, empty at first): the last batch read, its events by sequence number. Finding an
    event means decoding (or normalising again) its whole batch, about 7 ms for a 500-event request body,
    and the findings a caller looks up one after another mostly come from the same batch."""
    row = db.execute("SELECT seq FROM event_ids WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        return None
    seq = int(row[0])
    batch = db.execute(
        "SELECT last, first, form, params, body FROM event_batches WHERE last >= ? ORDER BY last LIMIT 1",
        (seq,),
    ).fetchone()
    if batch is None:
        return None
    last, first = int(batch[0]), int(batch[1])
    cache = {} if cache is None else cache
    events = cache.get(last)
    if events is None:
        events = {s.seq: s.event for s in _batch(db, first, last, *batch[2:])}
        cache.clear()
        cache[last] = events
    return events.get(seq)


def _batch(
    db: sqlite3.Connection, low: int, high: int, form: str, params: str | None, body: bytes
) -> list[StoredEvent]:
    """The events of one batch whose sequence numbers lie in ``low`` ... ``high``, in order."""
    expected: dict[str, int] = dict(
        db.execute("SELECT id, seq FROM event_ids WHERE seq BETWEEN ? AND ?", (low, high)).fetchall()
    )
    if not expected:
        return []
    out: list[StoredEvent] = []
    for event in _decode(form, params, body):
        seq = expected.pop(event.id, None)
        if seq is not None:
            out.append(StoredEvent(seq, event))
    if expected:  # (see the module docstring: only a changed normaliser gets here)
        MISSING[0] += len(expected)
        log.error(
            "%d stored events of sequence %d..%d no longer come out of their batch (%s form): %s",
            len(expected), low, high, form, sorted(expected.values())[:10],
        )  # fmt: skip
    out.sort(key=lambda s: s.seq)
    return out


def _decode(form: str, params: str | None, body: bytes) -> Iterator[Event]:
    """A batch body's events: JSON Lines of canonical events, or the raw bytes normalised again."""
    if form == "events":
        for line in body.split(b"\n"):
            if line:
                yield event_from_mapping(orjson.loads(line))
        return
    how = orjson.loads(params or "{}")
    normalizer = BatchNormalizer(
        how["format"], max_record_bytes=how["max_record_bytes"], max_document_bytes=how["max_document_bytes"]
    )
    yield from normalizer.body(body, "store").events


def last_seq(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT coalesce(max(seq), 0) FROM event_ids").fetchone()[0])


def count(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM event_ids").fetchone()[0])


def prune(db: sqlite3.Connection, received_before_ms: int, processed_through: int, limit: int) -> int:
    """One retention step (call inside a transaction): delete the ids of up to ``limit`` of the oldest
    events that are processed and whose batch was received before the cut-off, then the batches left with
    none; how many events. Everything below the first batch received at or after the cut-off counts as
    received before it (batches are received in sequence order, give or take a clock step).

    The index on ``received_ms`` says whether any batch is that new; the first such batch is then found by
    walking the batches oldest first (``+received_ms`` keeps SQLite off the index), a walk that stops at
    the first one kept and so costs what is left to prune. The minimum over the index's range read every
    kept batch (millions, with a week's retention) at every step; the walk alone, with nothing kept (no
    input for longer than the retention), would read every batch at every step."""
    newer = None
    if db.execute(
        "SELECT 1 FROM event_batches WHERE received_ms >= ? LIMIT 1", (received_before_ms,)
    ).fetchone():
        newer = db.execute(
            "SELECT first FROM event_batches WHERE +received_ms >= ? ORDER BY last LIMIT 1",
            (received_before_ms,),
        ).fetchone()[0]
    bound = processed_through if newer is None else min(processed_through, int(newer) - 1)
    cur = db.execute(
        "DELETE FROM event_ids WHERE seq IN (SELECT seq FROM event_ids WHERE seq <= ? ORDER BY seq LIMIT ?)",
        (bound, limit),
    )
    removed = int(cur.rowcount)
    low = db.execute("SELECT min(seq) FROM event_ids").fetchone()[0]
    db.execute("DELETE FROM event_batches WHERE last <= ? AND last < ?", (bound, low if low else 1 << 62))
    return removed


def migrate_rows(db: sqlite3.Connection) -> None:
    """Schema 3: the per-event rows of an older store's ``events`` table become one-event batches (their
    sequence numbers, ids, sources and receipt times unchanged), and the table goes."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
    if exists is None:
        return
    db.execute("INSERT INTO event_ids (seq, id) SELECT seq, id FROM events ORDER BY seq")
    db.execute(
        "INSERT INTO event_batches SELECT seq, seq, source, received_ms, 'events', NULL, body FROM events"
    )
    # numbering goes on after the old table's (its newest rows may have been pruned)
    old = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    if old is not None:
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'event_ids'")
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('event_ids', ?)", (int(old[0]),))
    db.execute("DROP TABLE events")

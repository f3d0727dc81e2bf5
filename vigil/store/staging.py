"""Staging in the store: a source's unit of work (a dropped file) becomes visible to the detector at once.

A drop folder reads a file in batches. Publishing each batch as it is read would let the detector see half
a file, and a crash in the middle would leave the other half to be read again and its first half duplicated
in the dead letters. So the batches are *staged* under a token (the file's identity) in ``staged``, and
:func:`publish` moves everything staged under it into the event log and the dead letters in one
transaction, recording the token as published (an offset named ``published:<token>``) so a restart knows
the file is done. The functions take the connection of a transaction the caller holds
(:class:`~vigil.store.sqlite.Store`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

import msgspec

from vigil.detectors.clock import to_ms
from vigil.events.deadletter import DeadLetter
from vigil.events.model import Event, encode_event
from vigil.store import eventlog

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS staged (
    n INTEGER PRIMARY KEY, token TEXT NOT NULL, kind TEXT NOT NULL, id TEXT, time_ms INTEGER,
    reason TEXT, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS staged_token ON staged(token, n);
"""
_INSERT: Final = "INSERT INTO staged (token, kind, id, time_ms, reason, body) VALUES (?, ?, ?, ?, ?, ?)"

#: (token, kind "e" or "d", event id, event time ms, dead letter reason, body)
Row = tuple[str, str, str | None, int | None, str | None, bytes]


def published_name(token: str) -> str:
    """The offset that records ``token`` as published."""
    return f"published:{token}"


def rows(token: str, events: Sequence[Event], dead: Sequence[DeadLetter]) -> list[Row]:
    """The rows that stage ``events`` and ``dead`` letters under ``token`` (built before the transaction)."""
    out: list[Row] = [(token, "e", e.id, to_ms(e.time), None, encode_event(e)) for e in events]
    out += [(token, "d", None, None, dl.reason, msgspec.json.encode(dl)) for dl in dead]
    return out


def insert(db: sqlite3.Connection, staged: list[Row]) -> None:
    db.executemany(_INSERT, staged)


#: events per batch of the event log when a staged unit is published
MOVE_BATCH: Final = 1000


def move(db: sqlite3.Connection, token: str, source: str, now_ms: int) -> int:
    """Move what is staged under ``token`` into the event log (batches of :data:`MOVE_BATCH` of the
    events' JSON Lines, in the order they were staged) and the dead letters, in order, and forget it; the
    number of events that were new to the log (the caller records the token as published).

    In batches, not one: a dropped file of a million events would otherwise be read into memory whole
    here, and again by the detect stage, which reads the log a batch at a time (memory grew by ~5 KB per
    event of a burst). One transaction either way: the file still becomes visible all at once."""
    cursor = db.execute("SELECT id, body FROM staged WHERE token = ? AND kind = 'e' ORDER BY n", (token,))
    count = 0
    while staged := cursor.fetchmany(MOVE_BATCH):
        batch = eventlog.lines([str(i) for i, _ in staged], b"\n".join(bytes(b) for _, b in staged))
        count += sum(1 for seq in eventlog.insert(db, batch, source, now_ms) if seq)
    db.execute(
        "INSERT INTO dead_letters (source, reason, received_ms, body) SELECT ?, reason, ?, body "
        "FROM staged WHERE token = ? AND kind = 'd' ORDER BY n",
        (source, now_ms, token),
    )
    discard(db, token)
    return count


def discard(db: sqlite3.Connection, token: str) -> None:
    db.execute("DELETE FROM staged WHERE token = ?", (token,))


def forget(db: sqlite3.Connection, token: str) -> None:
    """Forget that ``token`` was published (its file is in ``processed/``: the mark only mattered to a crash
    between the publish and that move)."""
    db.execute("DELETE FROM offsets WHERE source = ?", (published_name(token),))

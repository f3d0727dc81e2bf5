"""Dead letters in the store: their tables, and how a retried request's letters are stored once.

A dead letter is an input that could not become an event (bad JSON, an unknown format, a record over the
size limit), kept with its reason and enough of its body to fix and replay it. A client that retries a
request whose answer it lost sends the same bad records again: each letter's identity (source, reason,
position and content, everything but the time it was received: :func:`digest`) is kept in
``dead_letter_ids``, so the repeat is counted in ``repeats`` instead of stored twice. The functions take the
connection of a transaction the caller holds (:class:`~vigil.store.sqlite.Store`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import orjson

from vigil.events.deadletter import DeadLetter

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, source TEXT NOT NULL, reason TEXT NOT NULL,
    received_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letter_ids (digest TEXT PRIMARY KEY, repeats INTEGER NOT NULL);
"""
_INSERT: Final = "INSERT INTO dead_letters (source, reason, received_ms, body) VALUES (?, ?, ?, ?)"
#: the newest letters first
NEWEST: Final = "SELECT body FROM dead_letters ORDER BY seq DESC LIMIT ?"

#: (identity digest, (source, reason, received ms, body JSON))
Letter = tuple[str, tuple[str, str, int, bytes]]


def digest(source: str, letter: DeadLetter) -> str:
    """A dead letter's identity: everything but the time it was received."""
    body = msgspec.json.encode(msgspec.structs.replace(letter, at=None))
    return hashlib.blake2b(source.encode() + b"\x1f" + body, digest_size=16).hexdigest()


def prepare(letters: Sequence[DeadLetter], source: str, now_ms: int) -> list[Letter]:
    """Identity and row of each letter (computed before the transaction: hashing needs no lock)."""
    return [(digest(source, dl), (source, dl.reason, now_ms, msgspec.json.encode(dl))) for dl in letters]


def insert_new(db: sqlite3.Connection, letters: Sequence[Letter]) -> None:
    """Store the letters not seen before; count the repeats of the others."""
    for ident, row in letters:
        repeats = db.execute(
            "INSERT INTO dead_letter_ids VALUES (?, 0) ON CONFLICT(digest) DO UPDATE"
            " SET repeats = repeats + 1 RETURNING repeats",
            (ident,),
        ).fetchone()[0]
        if repeats == 0:
            db.execute(_INSERT, row)


def insert_all(db: sqlite3.Connection, letters: Sequence[DeadLetter], source: str, now_ms: int) -> None:
    """Store every letter as it is (a source with no retries to recognise)."""
    db.executemany(_INSERT, [(source, dl.reason, now_ms, msgspec.json.encode(dl)) for dl in letters])


def latest(rows: Sequence[tuple[bytes]]) -> list[dict[str, Any]]:
    """Letters as JSON objects from ``SELECT body`` rows."""
    return [orjson.loads(body) for (body,) in rows]

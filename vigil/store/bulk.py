"""One-statement bulk inserts for the store's hot writes (the event log, findings, incidents).

Why not ``executemany``: Python's sqlite3 driver releases the GIL around every step of a statement and must
win it back after each one, and ``executemany`` over N rows steps N times. In the daemon the writing thread
then queues behind the event loop (detection is pure Python) for up to the interpreter's switch interval
at every row. Measured on this 2-core VM, 500 rows of 2 KB per transaction beside one busy Python thread:
200-540 µs per row with ``executemany``, 60-70 µs with one statement (about 21 µs either way when nothing
else runs). So the rows travel as one JSON array, which SQLite's ``json_each`` unpacks in C, and at most
one blob column travels as one concatenated blob that ``substr`` cuts: the insert is a single step.

Values must be what JSON carries as SQLite values: ``str``, ``int``, ``float``, ``None`` (booleans would
arrive as 1/0); the blob column takes ``bytes``.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson


@functools.lru_cache(maxsize=32)
def _statement(into: str, columns: int, blob: int | None) -> str:
    parts = []
    for i in range(columns):
        if i == blob:
            parts.append(f"substr(?2, value ->> {columns}, value ->> {columns + 1})")
        else:
            parts.append(f"value ->> {i}")
    return f"{into} SELECT {', '.join(parts)} FROM json_each(?1)"


#: a statement and its parameters, ready to run (:func:`prepare`)
Prepared = tuple[str, tuple[Any, ...]]


def prepare(into: str, rows: Sequence[Sequence[Any]], blob: int | None = None) -> Prepared | None:
    """The one statement (and its parameters) that runs ``into`` (``INSERT [OR IGNORE] INTO table
    (columns)``) for every row; column ``blob`` (an index) holds bytes. None for no rows. Separate from
    :func:`insert_many` so a caller can build it before it takes a lock: the JSON and the joined blob are
    Python work that need not hold up another thread's transaction."""
    if not rows:
        return None
    columns = len(rows[0])
    if blob is None:
        return _statement(into, columns, None), (orjson.dumps(rows),)
    starts = itertools.accumulate((len(r[blob]) for r in rows), initial=1)  # substr counts from 1
    meta = [(*r[:blob], None, *r[blob + 1 :], at, len(r[blob])) for r, at in zip(rows, starts, strict=False)]
    # (the blob's place holds None in the JSON; its offset and length follow the last column)
    return _statement(into, columns, blob), (orjson.dumps(meta), b"".join(r[blob] for r in rows))


def insert_many(
    db: sqlite3.Connection, into: str, rows: Sequence[Sequence[Any]], blob: int | None = None
) -> sqlite3.Cursor | None:
    """Run ``into`` for every row in one statement (see :func:`prepare`). Rows go in in order. Returns the
    cursor (its ``rowcount`` and ``lastrowid``), or None for no rows."""
    statement = prepare(into, rows, blob)
    return db.execute(*statement) if statement is not None else None

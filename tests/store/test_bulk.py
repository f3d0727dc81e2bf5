"""One-statement bulk inserts: every value comes back exactly, in order, whatever the blob's place."""

from __future__ import annotations

import sqlite3

import pytest

from vigil.store.bulk import insert_many

ROWS = [
    ("a", 1, 1.5, None, b"\x00\xff" * 3),
    ('quote " back \\ tab \t', -(2**62), 1e-300, "ünï 🛡", b""),
    ("x" * 5000, 0, -0.25, "", bytes(range(256)) * 40),
]


@pytest.mark.parametrize("blob", [None, 0, 4])
def test_rows_come_back_exactly(blob: int | None) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (a, b, c, d, e)")
    rows = [list(r) for r in ROWS]
    if blob != 4:  # the last column as text when it is not the blob
        for r in rows:
            r[4] = bytes(r[4]).hex()
    if blob == 0:  # and the first as bytes when it is
        for r in rows:
            r[0] = str(r[0]).encode()
    cur = insert_many(db, "INSERT INTO t", rows, blob=blob)
    assert cur is not None and cur.rowcount == 3 and cur.lastrowid == 3
    assert [list(r) for r in db.execute("SELECT * FROM t ORDER BY rowid")] == rows


def test_no_rows_is_no_statement_and_ignore_counts_only_new_rows() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    assert insert_many(db, "INSERT INTO t", [], blob=1) is None
    insert_many(db, "INSERT INTO t", [("a", b"1")], blob=1)
    cur = insert_many(db, "INSERT OR IGNORE INTO t (k, v)", [("a", b"2"), ("b", b"3"), ("b", b"4")], blob=1)
    assert cur is not None and cur.rowcount == 1
    assert dict(db.execute("SELECT k, v FROM t")) == {"a": b"1", "b": b"3"}

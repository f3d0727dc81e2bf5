"""The store's schema version: a store written by an older Vigil is migrated, a newer one refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import ev
from tests.store.test_incidents import _f
from vigil.events.model import encode_event
from vigil.store import schema
from vigil.store.sqlite import Store, StoreError


def _columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(findings)")]


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'findings'")}


def _version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])


def test_new_findings_carry_their_incident(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    store.commit_detection([_f(0, "e1"), _f(60, "e2"), _f(0, "e3", node="n2")], 3, None)
    by_node = {i["group"]["node.id"]: i["id"] for i in store.incidents()}
    found = {f["event_ids"][0]: f["incident"] for f in store.findings()}
    assert found == {"e1": by_node["n1"], "e2": by_node["n1"], "e3": by_node["n2"]}
    assert [f["event_ids"][0] for f in store.findings(incident=by_node["n1"])] == ["e2", "e1"]  # newest first
    assert store.findings(incident="no-such-incident") == []
    assert _version(tmp_path / "vigil.db") == str(schema.SCHEMA_VERSION) == "3"
    assert "findings_incident" in _indexes(tmp_path / "vigil.db")


def test_a_version_1_store_is_migrated_and_its_findings_linked_from_the_timelines(tmp_path: Path) -> None:
    path = tmp_path / "vigil.db"
    store = Store(path)
    store.commit_detection([_f(0, "e1"), _f(0, "e2", node="n2")], 2, None)
    incidents = {i["group"]["node.id"]: i["id"] for i in store.incidents()}
    store.close()
    with sqlite3.connect(path) as conn:  # what version 1 wrote: no incident column
        conn.execute("DROP INDEX findings_incident")
        conn.execute("ALTER TABLE findings DROP COLUMN incident")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    assert "incident" not in _columns(path)

    store = Store(path)
    assert _columns(path)[-1] == "incident" and _version(path) == "3"
    assert "findings_incident" in _indexes(path)
    found = {f["event_ids"][0]: f["incident"] for f in store.findings()}
    assert found == {"e1": incidents["n1"], "e2": incidents["n2"]}
    store.commit_detection([_f(60, "e3")], 3, None)  # and it stores new findings as version 2 does
    assert {f["event_ids"][0]: f["incident"] for f in store.findings()}["e3"] == incidents["n1"]
    store.close()
    Store(path).close()  # opening again migrates nothing twice
    assert _version(path) == "3"


def test_a_store_of_a_newer_vigil_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "vigil.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(StoreError, match=r"store schema 99 is newer than this Vigil \(3\)"):
        Store(path)
    assert _version(path) == "99"


_V2_EVENTS = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, source TEXT NOT NULL,
    time_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX events_received ON events(received_ms);
CREATE UNIQUE INDEX events_id ON events(id);
"""


def test_a_version_2_event_log_becomes_batches_with_its_numbers_and_ids(tmp_path: Path) -> None:
    """Version 2 kept a row per event; its rows become one-event batches, the numbering goes on after the
    old table's (including numbers of rows pruned since), and re-deliveries are still recognised."""
    path = tmp_path / "vigil.db"
    Store(path).close()
    events = [ev(f"e{i}", i, raw={"i": i}) for i in range(4)]
    with sqlite3.connect(path) as conn:  # what version 2 wrote (seq 2 pruned, 6 the newest number used)
        conn.execute("DROP TABLE event_batches")
        conn.execute("DROP TABLE event_ids")
        conn.executescript(_V2_EVENTS)
        for seq, e in zip((1, 3, 4, 6), events, strict=True):
            row = (seq, e.id, "http:events", seq * 1000, 5000 + seq, encode_event(e))
            conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", row)
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    store = Store(path)
    assert _version(path) == "3"
    assert [(s.seq, s.event) for s in store.read_events(0)] == list(zip((1, 3, 4, 6), events, strict=True))
    assert store.event("e2") == events[2] and store.last_seq() == 6 and store.count_events() == 4
    dup, new = store.accept([events[1], ev("new", 9)], (), "http:events")
    assert dup == 0 and new > 6  # (the ignored duplicate may use up a number)
    assert store.prune_events(5004, processed_through=new) == 2  # (received at 5001 and 5003)
    assert [s.seq for s in store.read_events(0)] == [4, 6, new]
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'events'").fetchone() is None

"""The store's schema version: a store written by an older Vigil is migrated, a newer one refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.store.test_incidents import _f
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
    assert _version(tmp_path / "vigil.db") == str(schema.SCHEMA_VERSION) == "2"
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
    assert _columns(path)[-1] == "incident" and _version(path) == "2"
    assert "findings_incident" in _indexes(path)
    found = {f["event_ids"][0]: f["incident"] for f in store.findings()}
    assert found == {"e1": incidents["n1"], "e2": incidents["n2"]}
    store.commit_detection([_f(60, "e3")], 3, None)  # and it stores new findings as version 2 does
    assert {f["event_ids"][0]: f["incident"] for f in store.findings()}["e3"] == incidents["n1"]
    store.close()
    Store(path).close()  # opening again migrates nothing twice
    assert _version(path) == "2"


def test_a_store_of_a_newer_vigil_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "vigil.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(StoreError, match=r"store schema 99 is newer than this Vigil \(2\)"):
        Store(path)
    assert _version(path) == "99"

"""The embedded store's tables, its schema version, and the migrations from older versions.

Every table is created ``IF NOT EXISTS`` when a store opens; the ``meta`` table records the schema version.
A store written by an older Vigil is migrated in the same transaction as the rest of the opening (so a
crash leaves it at the old version, to be migrated again); one written by a newer Vigil is refused, since
this code may not write it correctly.

Versions:

1. the first;
2. ``findings.incident``: the incident a finding was filed into (set when it is stored; filled from the
   incident timelines for findings stored before), with an index. The response stage and
   ``GET /v1/findings`` (which can filter by it) read it.
3. the event log as batches (``event_batches``) and ids (``event_ids``) instead of a row per event
   (:mod:`vigil.store.eventlog` says why); an older store's event rows become one-event batches.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from vigil.store import deadletters, eventlog, findings, incidents, staging

SCHEMA_VERSION: Final = 3

_BASE: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (source TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY, cursor INTEGER NOT NULL, saved_ms INTEGER NOT NULL, body BLOB NOT NULL);
"""
SCHEMA: Final = (
    _BASE + eventlog.SCHEMA + staging.SCHEMA + deadletters.SCHEMA + findings.SCHEMA + incidents.SCHEMA
)


class NewerSchemaError(Exception):
    """The store was written by a newer Vigil (its version is the argument)."""


def apply(db: sqlite3.Connection) -> None:
    """Create what is missing and migrate an older store (call inside a transaction)."""
    _run(db, SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    version = SCHEMA_VERSION if row is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(version)
    if version < 2:
        _finding_incidents(db)
    if version < 3:
        eventlog.migrate_rows(db)
    _run(db, findings.INDEXES)
    db.execute(
        "INSERT INTO meta VALUES ('schema', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )


def _run(db: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` (``executescript`` would commit the caller's transaction)."""
    for stmt in filter(str.strip, script.split(";")):
        db.execute(stmt)


def _finding_incidents(db: sqlite3.Connection) -> None:
    """Version 2: add ``findings.incident`` and fill it from the timelines' ``finding`` entries."""
    db.execute("ALTER TABLE findings ADD COLUMN incident TEXT")
    db.execute(
        "UPDATE findings SET incident = t.incident FROM (SELECT incident, "
        "json_extract(CAST(detail AS TEXT), '$.finding') AS finding FROM incident_timeline "
        "WHERE kind = 'finding') AS t WHERE findings.id = t.finding"
    )

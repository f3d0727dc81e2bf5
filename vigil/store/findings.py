"""Findings in the store: their table, and how a batch of them is written exactly once.

A finding's row key is its identity (:func:`~vigil.detectors.finding.finding_id`: rule, group, form, time,
events), so the detect stage can process the same events again after a crash and insert nothing twice:
:func:`fresh` keeps only the findings the table does not hold yet (and the first of repeats inside one
batch); the incidents file those (``incidents.attach``), and :func:`insert` stores them with the incident
each joined (column ``incident``, schema version 2). Called inside the detection transaction
(:meth:`~vigil.store.sqlite.Store.commit_detection`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any, Final

from vigil.detectors.clock import to_ms
from vigil.detectors.finding import Finding, finding_id, group_key
from vigil.events.model import encode_json
from vigil.store.bulk import insert_many
from vigil.store.incidents import NewFinding

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS findings (
    id TEXT PRIMARY KEY, rule TEXT NOT NULL, severity TEXT NOT NULL, group_key TEXT NOT NULL,
    time_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL, body BLOB NOT NULL, incident TEXT);
CREATE INDEX IF NOT EXISTS findings_time ON findings(time_ms);
CREATE INDEX IF NOT EXISTS findings_rule ON findings(rule, time_ms);
"""
#: ids looked up per statement
_LOOKUP: Final = 500

#: (id, rule, severity, group key, time ms, event seq, body JSON)
Row = tuple[str, str, str, str, int, int, bytes]


def rows(findings: Iterable[tuple[int, Finding]]) -> list[Row]:
    """The table rows of (event seq, finding) pairs (computed before the transaction: hashing and encoding
    need no lock)."""
    return [
        (finding_id(f), f.rule, f.severity, group_key(f.group), to_ms(f.time), seq, encode_json(f))
        for seq, f in findings
    ]


def fresh(db: sqlite3.Connection, batch: list[Row]) -> list[Row]:
    """The rows whose finding the table does not hold yet (and the first of repeats inside the batch)."""
    seen: set[str] = set()
    for i in range(0, len(batch), _LOOKUP):
        ids = [r[0] for r in batch[i : i + _LOOKUP]]
        marks = ",".join("?" * len(ids))
        seen.update(r[0] for r in db.execute(f"SELECT id FROM findings WHERE id IN ({marks})", ids))
    out = []
    for row in batch:
        if row[0] not in seen:
            seen.add(row[0])
            out.append(row)
    return out


def as_new(rows: list[Row]) -> list[NewFinding]:
    """What the incidents need of each new finding (``incidents.attach``)."""
    return [(r[0], r[1], r[2], r[3], r[4], r[6]) for r in rows]


def insert(db: sqlite3.Connection, rows: list[Row], incident_of: dict[str, str]) -> None:
    """Insert new findings (from :func:`fresh`), each with the incident it was filed into."""
    insert_many(db, "INSERT INTO findings", [(*r, incident_of.get(r[0])) for r in rows], blob=6)


#: made after the migrations (a store of schema 1 has no ``incident`` column before them)
INDEXES: Final = "CREATE INDEX IF NOT EXISTS findings_incident ON findings(incident);"


def query(rule: str | None, since_ms: int, limit: int, incident: str | None = None) -> tuple[str, list[Any]]:
    """SQL and arguments of a listing, newest first: ``SELECT id, incident, body`` of the findings."""
    sql = "SELECT id, incident, body FROM findings WHERE time_ms >= ?"
    args: list[Any] = [since_ms]
    for column, value in (("rule", rule), ("incident", incident)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    sql += " ORDER BY time_ms DESC, id LIMIT ?"
    args.append(limit)
    return sql, args

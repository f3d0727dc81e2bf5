"""Incidents: findings of one rule about one group, grouped over a window, with a state and a timeline.

An analyst works incidents, not findings: forty "burst of secret reads" findings about one vault in an
hour are one incident with forty findings. A new finding joins the open (or acknowledged) incident of its
rule and group whose last finding is at most ``window`` older; otherwise it opens a new incident. States:
``open`` → ``acknowledged`` → ``resolved`` (a resolved incident takes no new findings; the next one opens a
new incident). Every change is a timeline entry (opened, finding, acknowledged, resolved, with who and when).

Grouping runs inside the store's detection transaction (:meth:`~vigil.store.sqlite.Store.commit_detection`)
and only for findings that were new, so re-processing after a crash neither adds findings nor counts
them twice in an incident. An incident's id is derived from its first finding's id, so it is stable too; like
finding ids it starts with the time (of that finding), so the table's key takes new incidents at its edge.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from typing import Any, Final, Literal

import orjson

from vigil.events.fields import time_id
from vigil.store.bulk import insert_many

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY, rule TEXT NOT NULL, group_key TEXT NOT NULL, state TEXT NOT NULL,
    severity TEXT NOT NULL, title TEXT NOT NULL, grp BLOB NOT NULL,
    opened_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, findings INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS incidents_key ON incidents(rule, group_key, state, last_ms);
CREATE INDEX IF NOT EXISTS incidents_last ON incidents(last_ms);
CREATE TABLE IF NOT EXISTS incident_timeline (
    n INTEGER PRIMARY KEY, incident TEXT NOT NULL, at_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    actor TEXT NOT NULL, detail BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS incident_timeline_by ON incident_timeline(incident, n);
"""

State = Literal["open", "acknowledged", "resolved"]
#: which state may follow which
TRANSITIONS: Final[dict[str, tuple[str, ...]]] = {
    "open": ("acknowledged", "resolved"),
    "acknowledged": ("resolved",),
    "resolved": (),
}
DEFAULT_WINDOW_MS: Final = 3_600_000
#: columns of a new incident's row (in table order) that grow while a batch attaches findings to it
_LAST_MS: Final = 8
_FINDINGS: Final = 9

#: (finding id, rule, severity, group key, time ms, body JSON) of a finding that was just stored
NewFinding = tuple[str, str, str, str, int, bytes]


class IncidentError(ValueError):
    """An unknown incident, or a state change that is not allowed."""


def attach(db: sqlite3.Connection, found: list[NewFinding], window_ms: int) -> dict[str, str]:
    """File each new finding into an incident (call inside the detection transaction); finding id -> the
    incident's id. Batched: one look-up for every (rule, group) of the batch, then one statement per kind
    of write; an incident opened here is written once, with its final count."""
    now = int(time.time() * 1000)
    by_group: dict[tuple[str, str], list[NewFinding]] = {}
    for item in found:
        by_group.setdefault((item[1], item[3]), []).append(item)
    current = newest(db, list(by_group), open_only=True)
    opened: dict[str, list[Any]] = {}  # incident -> its row, findings and last_ms final
    counts: dict[str, list[int]] = {}  # existing incident -> [findings added, newest time]
    timeline: list[tuple[Any, ...]] = []
    filed: dict[str, str] = {}
    for group, items in by_group.items():
        rule, gkey = group
        items.sort(key=lambda f: f[4])
        iid, last = current.get(group, (None, None))
        for fid, _, severity, _, t, body in items:
            if iid is None or last is None or t - last > window_ms:
                data = orjson.loads(body)
                iid = time_id("", f"incident\x1f{fid}", t)
                grp = orjson.dumps(data.get("group", {}))
                opened[iid] = [iid, rule, gkey, "open", severity, data.get("title", rule), grp, t, t, 0]
                timeline.append((iid, now, "opened", "system", orjson.dumps({"finding": fid})))
                last = t
            last = max(last, t)
            row = opened.get(iid)
            if row is not None:
                row[_LAST_MS] = max(row[_LAST_MS], t)
                row[_FINDINGS] += 1
            else:
                entry = counts.setdefault(iid, [0, t])
                entry[0] += 1
                entry[1] = max(entry[1], t)
            timeline.append(
                (iid, now, "finding", f"rule:{rule}", orjson.dumps({"finding": fid, "time_ms": t}))
            )
            filed[fid] = iid
    # (one statement each for the many rows, see vigil/store/bulk.py; the updates are few)
    insert_many(db, "INSERT OR IGNORE INTO incidents", list(opened.values()), blob=6)
    db.executemany(
        "UPDATE incidents SET findings = findings + ?, last_ms = max(last_ms, ?) WHERE id = ?",
        [(n, t, iid) for iid, (n, t) in counts.items()],
    )
    insert_many(db, "INSERT INTO incident_timeline (incident, at_ms, kind, actor, detail)", timeline, blob=4)
    return filed


def newest(
    db: sqlite3.Connection, groups: list[tuple[str, str]], *, open_only: bool = False
) -> dict[tuple[str, str], tuple[str, int]]:
    """(rule, group key) -> (id, last_ms) of its newest incident (``open_only``: newest not resolved), for
    the pairs that have one; in statements of up to 250 pairs.

    Written as a join from the pairs to the table, so each pair is one search of the index on (rule, group
    key, state): SQLite plans ``(rule, group_key) IN (VALUES ...)`` as a scan of the whole table, which
    made every detection commit slower as incidents accumulated (a long-running daemon's table only
    grows). ``tests/store/test_incidents.py`` checks the plan."""
    out: dict[tuple[str, str], tuple[str, int]] = {}
    for i in range(0, len(groups), 250):
        part = groups[i : i + 250]
        rows = db.execute(_lookup_sql(len(part), open_only), [v for pair in part for v in pair])
        for rule, gkey, iid, last in rows:
            known = out.get((rule, gkey))
            if known is None or int(last) > known[1]:
                out[(rule, gkey)] = (str(iid), int(last))
    return out


@functools.lru_cache(maxsize=16)
def _lookup_sql(pairs: int, open_only: bool) -> str:
    """The look-up of :func:`newest` for ``pairs`` (rule, group key) pairs."""
    values = ",".join("(?, ?)" for _ in range(pairs))
    where = " WHERE i.state != 'resolved'" if open_only else ""
    return (
        f"WITH k(rule, gkey) AS (VALUES {values}) SELECT i.rule, i.group_key, i.id, i.last_ms FROM k "
        f"CROSS JOIN incidents AS i ON i.rule = k.rule AND i.group_key = k.gkey{where}"
    )


def transition(db: sqlite3.Connection, iid: str, to: State, actor: str, note: str = "") -> dict[str, Any]:
    """Move an incident to ``to`` (call inside a transaction); IncidentError if not allowed."""
    row = db.execute("SELECT state FROM incidents WHERE id = ?", (iid,)).fetchone()
    if row is None:
        raise IncidentError(f"no incident {iid!r}")
    if to not in TRANSITIONS[row[0]]:
        raise IncidentError(f"incident {iid} is {row[0]}; it cannot become {to}")
    db.execute("UPDATE incidents SET state = ? WHERE id = ?", (to, iid))
    _timeline(db, iid, int(time.time() * 1000), to, actor, {"note": note} if note else {})
    return {"id": iid, "state": to}


#: resolved incidents looked at per retention step
_PRUNE_INCIDENTS: Final = 100


def prune(db: sqlite3.Connection, before_ms: int, findings: int) -> tuple[int, int]:
    """One retention step (call inside a transaction): of the oldest resolved incidents whose last finding
    and last timeline entry are both before ``before_ms``, delete up to ``findings`` of their findings
    (with those timeline entries), then each such incident that has none left, with the rest of its
    timeline. Returns (incidents deleted, findings deleted); (0, 0) when nothing is due.

    Open and acknowledged incidents and their findings are kept whatever their age: someone still has to
    act on them. A large incident goes in several steps, so no transaction grows with its size. The newest
    finding row (and so its incident) is kept too: the alert and response stages read the table after a
    ``rowid`` cursor, and SQLite gives a new row the largest rowid plus one, so deleting the largest would
    let the next finding take a rowid at or below their cursors, and they would never see it.

    Findings of no incident go first, by their own time: a store migrated from schema 1 keeps a null
    ``incident`` on findings that no timeline named, and nothing else would ever delete them."""
    orphans = db.execute(
        "SELECT rowid FROM findings INDEXED BY findings_incident WHERE incident IS NULL AND time_ms < ? "
        "AND rowid < (SELECT max(rowid) FROM findings) LIMIT ?",
        (before_ms, findings),
    ).fetchall()
    if orphans:
        db.executemany("DELETE FROM findings WHERE rowid = ?", orphans)
        return 0, len(orphans)
    due = [
        str(r[0])
        for r in db.execute(
            "SELECT id FROM incidents AS i WHERE last_ms < ? AND state = 'resolved' AND NOT EXISTS "
            "(SELECT 1 FROM incident_timeline AS t WHERE t.incident = i.id AND t.at_ms >= ?) "
            "ORDER BY last_ms LIMIT ?",
            (before_ms, before_ms, _PRUNE_INCIDENTS),
        )
    ]
    if not due:
        return 0, 0
    marks = ",".join("?" * len(due))
    entries = db.execute(
        "SELECT n, json_extract(CAST(detail AS TEXT), '$.finding') FROM incident_timeline "
        f"WHERE incident IN ({marks}) AND kind = 'finding' ORDER BY n LIMIT ?",
        (*due, findings),
    ).fetchall()
    newest = db.execute("SELECT id FROM findings ORDER BY rowid DESC LIMIT 1").fetchone()
    entries = [(n, fid) for n, fid in entries if newest is None or fid != newest[0]]
    if entries:
        db.executemany("DELETE FROM findings WHERE id = ?", [(fid,) for _, fid in entries])
        db.executemany("DELETE FROM incident_timeline WHERE n = ?", [(n,) for n, _ in entries])
    left = {
        str(r[0])
        for r in db.execute(
            f"SELECT DISTINCT incident FROM incident_timeline WHERE incident IN ({marks}) "
            "AND kind = 'finding'",
            due,
        )
    }
    done = [iid for iid in due if iid not in left]
    if done:
        db.executemany("DELETE FROM incident_timeline WHERE incident = ?", [(iid,) for iid in done])
        db.executemany("DELETE FROM incidents WHERE id = ?", [(iid,) for iid in done])
    return len(done), len(entries)


def listing(db: sqlite3.Connection, state: str | None, limit: int) -> list[dict[str, Any]]:
    sql = "SELECT * FROM incidents"
    args: list[Any] = []
    if state:
        sql += " WHERE state = ?"
        args.append(state)
    sql += " ORDER BY last_ms DESC, id LIMIT ?"
    args.append(limit)
    return [_incident(r) for r in db.execute(sql, args).fetchall()]


def one(db: sqlite3.Connection, iid: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM incidents WHERE id = ?", (iid,)).fetchone()
    if row is None:
        return None
    out = _incident(row)
    out["timeline"] = [
        {"at_ms": at, "kind": kind, "actor": actor, **orjson.loads(detail)}
        for at, kind, actor, detail in db.execute(
            "SELECT at_ms, kind, actor, detail FROM incident_timeline WHERE incident = ? ORDER BY n", (iid,)
        )
    ]
    return out


def _incident(row: tuple[Any, ...]) -> dict[str, Any]:
    iid, rule, gkey, state, severity, title, grp, opened, last, count = row
    return {
        "id": iid,
        "rule": rule,
        "group_key": gkey,
        "title": title,
        "severity": severity,
        "state": state,
        "group": orjson.loads(grp),
        "opened_ms": opened,
        "last_ms": last,
        "findings": count,
    }


def _timeline(
    db: sqlite3.Connection, iid: str, at: int, kind: str, actor: str, detail: dict[str, Any]
) -> None:
    db.execute(
        "INSERT INTO incident_timeline (incident, at_ms, kind, actor, detail) VALUES (?, ?, ?, ?, ?)",
        (iid, at, kind, actor, orjson.dumps(detail)),
    )

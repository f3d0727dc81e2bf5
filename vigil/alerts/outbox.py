"""The durable outbox: every notification is a row in the store before any sink sees it.

Why a table and not a queue in memory: a sink that is down for an hour (PagerDuty answering 429, a Teams
workflow deleted and recreated) must lose nothing, and neither may a crash or a restart. The row is
committed first (:meth:`Outbox.enqueue`), the worker sends it afterwards; a sink that comes back gets the
backlog. Peers that send straight from memory drop alerts when an output is down (falcosidekick#297).

Where: the table lives in the daemon's store database (``vigil.db``) beside events, findings and actions,
through a connection of its own, as :class:`vigil.response.store.ActionStore` does: an alert's state change
never shares a transaction with ingestion, WAL mode and a 5 s ``busy_timeout`` let the connections (and a
second process) wait for each other, and ``meta.outbox_schema`` records the table's version.

Table ``outbox``, one row per alert and sink::

    id INTEGER (AUTOINCREMENT), sink, dedup_key, kind, alert (the redacted Alert as JSON),
    state pending|sending|sent|dead, attempts, next_at, last_error, last_status,
    created, updated, sent_at

States: ``pending`` (waiting, due at ``next_at``) → ``sending`` (an attempt in progress; ``attempts``
counts it) → ``sent``, back to ``pending`` with a later ``next_at`` (:meth:`mark_retry`), or ``dead`` (a
dead letter, with the reason in ``last_error``). Every change is a compare-and-set on the state.

Delivery is **at least once per sink**. A crash between the sink accepting a request and
:meth:`mark_sent` leaves the row ``sending``; :meth:`recover` (at start) puts it back to ``pending`` and it
is sent again with the *same* alert and so the same ``dedup_key``: PagerDuty folds the two into one
incident, and the other sinks show the dedup key on every card, so a duplicate is recognisable as one. No
path loses a committed row; exactly-once is impossible against a sink that can accept and then lose the
connection.

The alert is redacted once more on the way in (:func:`vigil.alerts.redact.redact_alert`), so a secret that
a caller forgot to remove is never written to the database file, whichever path built the alert.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from vigil.alerts.model import Alert
from vigil.alerts.redact import redact_alert, redact_text
from vigil.store.sidecar import SidecarTables
from vigil.streams.crash import crash_point

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, dedup_key TEXT NOT NULL, kind TEXT NOT NULL,
    alert TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '', last_status INTEGER, created REAL NOT NULL, updated REAL NOT NULL,
    sent_at REAL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(sink, state, next_at);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, sent_at);
CREATE INDEX IF NOT EXISTS outbox_dedup ON outbox(dedup_key);
"""
_COLUMNS: Final = (
    "id, sink, dedup_key, kind, alert, state, attempts, next_at, last_error, last_status, created, updated, "
    "sent_at"
)
_NAMES: Final = tuple(_COLUMNS.split(", "))
#: an error or reason kept in the row (and shown by the API) is cut to this length
MAX_ERROR: Final = 500


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One row: one alert for one sink, and how its delivery stands."""

    id: int
    sink: str
    dedup_key: str
    kind: str
    alert: Alert
    state: OutboxState
    attempts: int
    next_at: float
    last_error: str
    last_status: int | None
    created: float
    updated: float
    sent_at: float | None

    def to_json(self) -> dict[str, Any]:
        """The row for ``GET /v1/alerts`` (the alert is stored redacted)."""
        return {
            "id": self.id, "sink": self.sink, "dedup_key": self.dedup_key, "kind": self.kind,
            "state": self.state.value, "attempts": self.attempts, "next_at": self.next_at,
            "last_error": self.last_error, "last_status": self.last_status, "created": self.created,
            "updated": self.updated, "sent_at": self.sent_at, "alert": self.alert.to_json(),
        }  # fmt: skip


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    values = dict(zip(_NAMES, row, strict=True))
    values["alert"] = Alert.from_json(orjson.loads(values["alert"]))
    values["state"] = OutboxState(values["state"])
    return OutboxEntry(**values)


def _reason(text: str) -> str:
    return redact_text(text)[:MAX_ERROR]


class Outbox(SidecarTables):
    """The outbox table in the SQLite database at ``path`` (see the module docstring). Methods are
    synchronous and short (one small transaction each); a lock lets threads share an instance."""

    SCHEMA = _SCHEMA
    SCHEMA_KEY = "outbox_schema"
    SCHEMA_VERSION = SCHEMA_VERSION
    WHAT = "outbox"

    def _update(self, sql: str, args: Iterable[Any]) -> bool:
        with self._tx() as db:
            return db.execute(sql, tuple(args)).rowcount == 1

    # -- writes ------------------------------------------------------------------------------------------

    def enqueue(self, sink: str, alert: Alert) -> int:
        """Store ``alert`` (redacted) for ``sink``, due now; committed before this returns. Its id."""
        return self.enqueue_many([sink], alert)[0]

    def enqueue_many(self, sinks: Iterable[str], alert: Alert) -> builtins.list[int]:
        """One row per sink for ``alert``, in one transaction; their ids, in the order of ``sinks``."""
        return self.enqueue_batch([(sinks, alert)])[0]

    def enqueue_batch(
        self, items: Iterable[tuple[Iterable[str], Alert]]
    ) -> builtins.list[builtins.list[int]]:
        """One row per sink for each alert, all in one transaction (one commit for a step's alerts, not
        one each); the ids per item, in order (none for an item without sinks)."""
        rows = []
        for sinks, alert in items:
            names = builtins.list(sinks)
            clean = redact_alert(alert) if names else alert
            rows.append((names, clean, orjson.dumps(clean.to_json()).decode() if names else ""))
        now = self._clock()
        out: builtins.list[builtins.list[int]] = []
        with self._tx() as db:
            for sinks, clean, body in rows:
                ids = []
                for sink in sinks:
                    cur = db.execute(
                        "INSERT INTO outbox (sink, dedup_key, kind, alert, state, next_at, created, updated) "
                        "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
                        (sink, clean.dedup_key, clean.kind.value, body, now, now, now),
                    )
                    ids.append(int(cur.lastrowid or 0))
                out.append(ids)
        crash_point("alerts.after_enqueue")
        return out

    def mark_sending(self, entry_id: int) -> bool:
        """Claim a pending row for one attempt (``attempts`` + 1); False when it is not pending."""
        return self._update(
            "UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated = ? "
            "WHERE id = ? AND state = 'pending'",
            (self._clock(), entry_id),
        )

    def mark_sent(self, entry_id: int, status: int | None = None) -> bool:
        """The sink accepted the attempt in flight."""
        now = self._clock()
        return self._update(
            "UPDATE outbox SET state = 'sent', sent_at = ?, updated = ?, last_status = ? "
            "WHERE id = ? AND state = 'sending'",
            (now, now, status, entry_id),
        )

    def mark_retry(self, entry_id: int, next_at: float, error: str, status: int | None = None) -> bool:
        """The attempt in flight failed in a way worth retrying: pending again, due at ``next_at``."""
        return self._update(
            "UPDATE outbox SET state = 'pending', next_at = ?, last_error = ?, last_status = ?, updated = ? "
            "WHERE id = ? AND state = 'sending'",
            (next_at, _reason(error), status, self._clock(), entry_id),
        )

    def mark_dead(self, entry_id: int, reason: str, status: int | None = None) -> bool:
        """A dead letter: retrying cannot help (a 400) or the retry horizon passed. Kept for inspection."""
        return self._update(
            "UPDATE outbox SET state = 'dead', last_error = ?, last_status = ?, updated = ? "
            "WHERE id = ? AND state IN ('pending', 'sending')",
            (_reason(reason), status, self._clock(), entry_id),
        )

    def recover(self) -> int:
        """At start: rows left ``sending`` by a crash go back to ``pending``, due now (sent again, with the
        same dedup key). The number of rows recovered."""
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE outbox SET state = 'pending', next_at = ?, updated = ? WHERE state = 'sending'",
                (now, now),
            )
            return int(cur.rowcount)

    def prune(self, older_than: float, limit: int | None = None) -> int:
        """Delete sent rows sent before ``older_than`` (dead letters are kept), at most ``limit`` of them
        (the oldest first; None: all); the number deleted. The dispatcher deletes in slices, so the first
        prune of a large outbox does not hold the database's write lock (and ingestion) for long."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'sent' AND "
                "sent_at < ? ORDER BY sent_at LIMIT ?)",
                (older_than, -1 if limit is None else limit),  # (SQLite: a negative LIMIT is none)
            )
            return int(cur.rowcount)

    # -- reads -------------------------------------------------------------------------------------------

    def get(self, entry_id: int) -> OutboxEntry | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (entry_id,))
        return _entry(rows[0]) if rows else None

    def due(self, sink: str, now: float, limit: int = 100) -> builtins.list[OutboxEntry]:
        """Pending rows of ``sink`` due at ``now``, oldest first."""
        sql = (
            f"SELECT {_COLUMNS} FROM outbox WHERE sink = ? AND state = 'pending' AND next_at <= ? "
            "ORDER BY id LIMIT ?"
        )
        return [_entry(r) for r in self._read(sql, (sink, now, max(0, limit)))]

    def waiting(self, sink: str) -> int:
        """Rows of ``sink`` not yet delivered or dead (pending or being sent)."""
        rows = self._read(
            "SELECT count(*) FROM outbox WHERE sink = ? AND state IN ('pending', 'sending')", (sink,)
        )
        return int(rows[0][0])

    def next_due(self, sink: str) -> float | None:
        """When the earliest pending row of ``sink`` is due (None: nothing pending)."""
        rows = self._read("SELECT min(next_at) FROM outbox WHERE sink = ? AND state = 'pending'", (sink,))
        return None if rows[0][0] is None else float(rows[0][0])

    def list(
        self, sink: str | None = None, state: OutboxState | str | None = None, limit: int = 100
    ) -> builtins.list[OutboxEntry]:
        """Rows matching the filters given, newest first."""
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if sink is not None:
            where.append("sink = ?")
            args.append(sink)
        if state is not None:
            where.append("state = ?")
            args.append(OutboxState(state).value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_COLUMNS} FROM outbox {clause} ORDER BY id DESC LIMIT ?"
        return [_entry(r) for r in self._read(sql, [*args, max(0, limit)])]

    def stats(self, sink: str | None = None) -> dict[str, dict[str, Any]]:
        """Per sink: the number of rows in each state and ``oldest_pending`` (the creation time of the oldest
        row not yet sent or dead, None when there is none). For ``GET /v1/alerts`` and the metrics."""
        where, args = ("WHERE sink = ?", (sink,)) if sink is not None else ("", ())
        out: dict[str, dict[str, Any]] = {}
        for name, state, count, oldest in self._read(
            f"SELECT sink, state, count(*), min(created) FROM outbox {where} GROUP BY sink, state", args
        ):
            row = out.setdefault(name, {s.value: 0 for s in OutboxState} | {"oldest_pending": None})
            row[state] = int(count)
            if state in (OutboxState.PENDING, OutboxState.SENDING):
                current = row["oldest_pending"]
                row["oldest_pending"] = oldest if current is None else min(current, oldest)
        return out

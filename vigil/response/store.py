"""The action store: every action, its state machine enforced by compare-and-set, and its timeline.

Where and why apart: the tables live in the daemon's store database (``vigil.db``, the file of
:mod:`vigil.store.sqlite`), so one file holds events, findings, incidents and what was done about them, but
:class:`ActionStore` opens its *own* connection. The response path must never share a transaction with the
event log's hot path: a large ingestion commit must not hold an action's state change, and an action's
compare-and-set must not roll back with a failed event batch. Nothing needs the two in one transaction,
because actions are identified by their idempotency key, not by the transaction that created them: a
finding re-detected after a crash creates nothing new (:meth:`ActionStore.create` returns the stored one).
WAL mode and a 5 s ``busy_timeout`` let the two connections (and a second process) wait for each other.

Tables::

    actions     one row per action; idem_key UNIQUE (one action per rule, target, remediation, window)
    action_log  the timeline: seq, action_id, time, state (after the entry), actor, message, details (JSON)

Invariants:

* A state changes only through :meth:`ActionStore.transition`, one ``BEGIN IMMEDIATE`` transaction doing
  ``UPDATE ... WHERE id = ? AND state IN (...)`` and appending the timeline row: two executors racing for
  one approved action get one ``running`` and one :class:`ActionConflictError`.
* Only the edges of :data:`TRANSITIONS` exist (the diagram in :mod:`vigil.response.model`); asking for
  another is a programming error (ValueError), not a conflict. ``running → running`` stores the plan.
* ``progress`` only grows, and only while ``running`` (:meth:`ActionStore.set_progress`).

Methods are synchronous and small (one short transaction each), so the engine calls them from the event
loop; a ``threading.RLock`` lets tests and worker threads share one instance.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from vigil.errors import VigilError
from vigil.response.model import Action, ActionState
from vigil.store.sidecar import SidecarTables

S = ActionState
SCHEMA_VERSION: Final = 1

#: every allowed state change (the diagram in vigil.response.model); actions are created in INITIAL states
TRANSITIONS: Final[Mapping[ActionState, frozenset[ActionState]]] = {
    S.PENDING_APPROVAL: frozenset({S.APPROVED, S.REJECTED, S.EXPIRED, S.REFUSED, S.DRY_RUN}),
    S.APPROVED: frozenset({S.RUNNING, S.DRY_RUN, S.REFUSED}),
    S.RUNNING: frozenset({S.RUNNING, S.SUCCEEDED, S.NOOP, S.FAILED, S.TIMED_OUT}),
    S.SUCCEEDED: frozenset({S.ROLLED_BACK, S.ROLLBACK_FAILED}),
    S.NOOP: frozenset({S.ROLLED_BACK, S.ROLLBACK_FAILED}),
    S.TIMED_OUT: frozenset({S.ROLLED_BACK, S.ROLLBACK_FAILED}),
    # a rollback that failed (often half-way: a lock removed, the properties not yet restored) may be tried
    # again once its cause is fixed; rollbacks start from the live state, so a retry finishes the job
    S.ROLLBACK_FAILED: frozenset({S.ROLLED_BACK, S.ROLLBACK_FAILED}),
}
INITIAL: Final = frozenset({S.PENDING_APPROVAL, S.APPROVED, S.REFUSED, S.DRY_RUN})
#: states that do not count against blast-radius windows and rate limits (nothing was or will be done)
NOT_COUNTED: Final = (S.REFUSED.value, S.REJECTED.value, S.EXPIRED.value, S.DRY_RUN.value)
#: what :meth:`ActionStore.transition` may set besides the state
FIELDS: Final = frozenset({"plan", "plan_digest", "progress", "result", "reason", "decided_by", "expires"})
_JSON_FIELDS: Final = frozenset({"plan", "result"})

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY, idem_key TEXT NOT NULL UNIQUE, rule TEXT NOT NULL, rule_author TEXT NOT NULL,
    finding_id TEXT NOT NULL, incident_id TEXT, remediation TEXT NOT NULL, target TEXT NOT NULL,
    params TEXT NOT NULL, approval TEXT NOT NULL, dry_run INTEGER NOT NULL, state TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, plan TEXT, plan_digest TEXT,
    progress INTEGER NOT NULL DEFAULT 0, result TEXT NOT NULL DEFAULT '{}', reason TEXT NOT NULL DEFAULT '',
    decided_by TEXT, expires REAL);
CREATE INDEX IF NOT EXISTS actions_state ON actions(state, created);
CREATE INDEX IF NOT EXISTS actions_rule ON actions(rule, created);
CREATE INDEX IF NOT EXISTS actions_incident ON actions(incident_id, created);
CREATE INDEX IF NOT EXISTS actions_created ON actions(created);
CREATE TABLE IF NOT EXISTS action_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, action_id TEXT NOT NULL, time REAL NOT NULL, state TEXT NOT NULL,
    actor TEXT NOT NULL, message TEXT NOT NULL, details TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS action_log_action ON action_log(action_id, seq);
"""

_COLUMNS: Final = (
    "id, idem_key, rule, rule_author, finding_id, incident_id, remediation, target, params, approval, "
    "dry_run, state, created, updated, plan, plan_digest, progress, result, reason, decided_by, expires"
)


_NAMES: Final = tuple(_COLUMNS.split(", "))


class ActionConflictError(VigilError):
    """The action is not in a state the operation accepts; ``current`` is the state it is in."""

    def __init__(self, action_id: str, current: ActionState, wanted: str) -> None:
        self.action_id = action_id
        self.current = current
        super().__init__(f"action {action_id} is {current.value}: cannot {wanted}")


class ActionNotFoundError(VigilError):
    """No action with that id."""


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _action(row: tuple[Any, ...]) -> Action:
    values = dict(zip(_NAMES, row, strict=True))
    for name in ("params", "result"):
        values[name] = orjson.loads(values[name])
    if values["plan"] is not None:
        values["plan"] = orjson.loads(values["plan"])
    values["dry_run"], values["state"] = bool(values["dry_run"]), ActionState(values["state"])
    return Action(**values)


class ActionStore(SidecarTables):
    """The actions and their timelines in the SQLite database at ``path`` (see the module docstring)."""

    SCHEMA = _SCHEMA
    SCHEMA_KEY = "actions_schema"
    SCHEMA_VERSION = SCHEMA_VERSION
    WHAT = "action store"

    def _row(self, db: sqlite3.Connection, action_id: str) -> Action:
        row = db.execute(f"SELECT {_COLUMNS} FROM actions WHERE id = ?", (action_id,)).fetchone()
        if row is None:
            raise ActionNotFoundError(f"no action {action_id}")
        return _action(row)

    def _append_log(
        self,
        db: sqlite3.Connection,
        action_id: str,
        state: ActionState,
        actor: str,
        message: str,
        details: Mapping[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO action_log (action_id, time, state, actor, message, details) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (action_id, self._clock(), state.value, actor, message, _json(dict(details))),
        )

    # -- writes ------------------------------------------------------------------------------------------

    def create(self, action: Action) -> tuple[Action, bool]:
        """Store ``action`` unless its idempotency key exists; (the stored action, whether it was created)."""
        if action.state not in INITIAL:
            raise ValueError(f"an action is created {', '.join(sorted(INITIAL))}, not {action.state.value}")
        a = action.to_json()
        values = [a[c] for c in _NAMES]
        for i, name in enumerate(_NAMES):
            if name in ("params", "result") or (name == "plan" and values[i] is not None):
                values[i] = _json(values[i])
        with self._tx() as db:
            try:
                cur = db.execute(
                    f"INSERT INTO actions ({_COLUMNS}) VALUES ({', '.join('?' * len(values))}) "
                    "ON CONFLICT(idem_key) DO NOTHING",
                    values,
                )
            except sqlite3.IntegrityError:
                existing = self.get(action.id)
                if existing is None:
                    raise  # a NOT NULL or similar failure: StoreError
                raise ActionConflictError(action.id, existing.state, "create it under another key") from None
            if cur.rowcount == 0:
                row = db.execute(f"SELECT {_COLUMNS} FROM actions WHERE idem_key = ?", (action.idem_key,))
                return _action(row.fetchone()), False
            details = {"finding": action.finding_id, "target": action.target, "reason": action.reason}
            self._append_log(db, action.id, action.state, f"rule:{action.rule}", "created", details)
            return self._row(db, action.id), True

    def transition(
        self,
        action_id: str,
        from_states: Iterable[ActionState],
        to: ActionState,
        *,
        actor: str,
        message: str = "",
        details: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Action:
        """Move the action from one of ``from_states`` to ``to`` and set ``fields``, in one transaction
        with its timeline row; ActionConflictError (naming the current state) when it is elsewhere."""
        sources = frozenset(ActionState(s) for s in from_states)
        if not sources or any(to not in TRANSITIONS.get(s, ()) for s in sources):
            raise ValueError(f"no transition to {to.value} from {sorted(s.value for s in sources)}")
        unknown = set(fields) - FIELDS
        if unknown:
            raise ValueError(f"transition cannot set {sorted(unknown)}")
        sets = ["state = ?", "updated = ?"] + [f"{name} = ?" for name in fields]
        args: builtins.list[Any] = [to.value, self._clock()]
        args += [_json(v) if name in _JSON_FIELDS and v is not None else v for name, v in fields.items()]
        marks = ", ".join("?" * len(sources))
        with self._tx() as db:
            current = self._row(db, action_id)
            cur = db.execute(
                f"UPDATE actions SET {', '.join(sets)} WHERE id = ? AND state IN ({marks})",
                [*args, action_id, *(s.value for s in sources)],
            )
            if cur.rowcount != 1:
                raise ActionConflictError(action_id, current.state, f"go to {to.value}")
            logged = {k: v for k, v in fields.items() if k not in _JSON_FIELDS}
            log_details = {"from": current.state.value, **logged, **(details or {})}
            self._append_log(db, action_id, to, actor, message or to.value, log_details)
            return self._row(db, action_id)

    def set_progress(self, action_id: str, progress: int, result: Mapping[str, Any]) -> Action:
        """Record that ``progress`` steps are applied (only while running, never backwards)."""
        with self._tx() as db:
            current = self._row(db, action_id)
            cur = db.execute(
                "UPDATE actions SET progress = ?, result = ?, updated = ? "
                "WHERE id = ? AND state = 'running' AND progress <= ?",
                (progress, _json(dict(result)), self._clock(), action_id, progress),
            )
            if cur.rowcount != 1:
                raise ActionConflictError(action_id, current.state, f"record progress {progress}")
            message = f"{progress} step(s) done"
            self._append_log(db, action_id, S.RUNNING, "vigil", message, {"progress": progress})
            return self._row(db, action_id)

    def log(self, action_id: str, actor: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        """Add a timeline entry without changing the action (a refused audit, a note)."""
        with self._tx() as db:
            current = self._row(db, action_id)
            self._append_log(db, action_id, current.state, actor, message, details or {})

    # -- reads -------------------------------------------------------------------------------------------

    def get(self, action_id: str) -> Action | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM actions WHERE id = ?", (action_id,))
        return _action(rows[0]) if rows else None

    def list(
        self,
        *,
        state: ActionState | None = None,
        rule: str | None = None,
        incident_id: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Action]:
        """Actions matching every filter given, newest first."""
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        for column, value in (("state", state), ("rule", rule), ("incident_id", incident_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value.value if isinstance(value, ActionState) else value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_COLUMNS} FROM actions {clause} ORDER BY created DESC, rowid DESC LIMIT ?"
        return [_action(r) for r in self._read(sql, [*args, max(0, limit)])]

    def by_states(self, states: Iterable[ActionState]) -> builtins.list[Action]:
        """Every action in one of ``states``, oldest first (what a restart resumes)."""
        values = [ActionState(s).value for s in states]
        if not values:
            return []
        sql = f"SELECT {_COLUMNS} FROM actions WHERE state IN ({', '.join('?' * len(values))})"
        return [_action(r) for r in self._read(sql + " ORDER BY created, rowid", values)]

    def history(self, action_id: str) -> builtins.list[dict[str, Any]]:
        """The action's timeline, oldest first."""
        rows = self._read(
            "SELECT seq, action_id, time, state, actor, message, details FROM action_log "
            "WHERE action_id = ? ORDER BY seq",
            (action_id,),
        )
        keys = ("seq", "action_id", "time", "state", "actor", "message")
        return [{**dict(zip(keys, row[:6], strict=True)), "details": orjson.loads(row[6])} for row in rows]

    def count_recent(self, rule: str, since: float) -> int:
        """Actions of ``rule`` created since ``since`` that did or will act (not refused, rejected,
        expired or dry-run): the rule's rate and blast-radius window."""
        sql = (
            "SELECT count(*) FROM actions WHERE rule = ? AND created >= ? "
            f"AND state NOT IN ({', '.join('?' * len(NOT_COUNTED))})"
        )
        return int(self._read(sql, (rule, since, *NOT_COUNTED))[0][0])

    def setting(self, key: str) -> str | None:
        """A value kept in the store's ``meta`` table (the run-time kill switch), or None."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def targets_recent(self, rule: str, remediation: str, since: float) -> set[str]:
        """The distinct targets of ``rule``'s ``remediation`` actions counted as :meth:`count_recent` does."""
        sql = (
            "SELECT DISTINCT target FROM actions WHERE rule = ? AND remediation = ? AND created >= ? "
            f"AND state NOT IN ({', '.join('?' * len(NOT_COUNTED))})"
        )
        return {r[0] for r in self._read(sql, (rule, remediation, since, *NOT_COUNTED))}

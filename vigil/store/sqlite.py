"""The embedded store: one SQLite database in WAL mode under the data folder.

What lives here, and why in one database: the **event log** (every accepted event, with a sequence number,
written before a source acknowledges it, in batches: :mod:`vigil.store.eventlog`), the **findings** (keyed by
their identity, so re-processing the same events after a crash inserts nothing twice), **dead letters**,
**source offsets** (a file tail's position) and **detector snapshots** with the event sequence they cover.
Because the detector's cursor, its snapshot and the findings it produced commit in one transaction
(:meth:`Store.commit_detection`), a crash anywhere leaves a state from which re-processing the events after
the cursor gives exactly the same findings: at-least-once processing, exactly-once findings.

Durability: ``synchronous=FULL`` by default (a commit survives power loss); ``NORMAL`` survives a crash of
the process but may lose the last commits on power loss, and is faster. Retention: :meth:`prune_events`
drops raw events older than a cut-off that the detector has already processed.

One connection, used from one thread at a time (the pipeline's stages take turns on the event loop or
hand the store to a worker thread); SQLite's own locking makes a second process fail cleanly.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from vigil.detectors.finding import Finding
from vigil.errors import VigilError
from vigil.events.deadletter import DeadLetter
from vigil.events.model import Event
from vigil.store import deadletters as letters_table
from vigil.store import eventlog, schema, staging
from vigil.store import findings as found
from vigil.store import incidents as book
from vigil.store.eventlog import RawBody, StoredEvent
from vigil.store.group import GroupCommit

__all__ = ["PAGE_SIZE", "PRUNE_SLICE", "RawBody", "Store", "StoreError", "StoredEvent"]

#: expired events deleted per transaction (:meth:`Store.prune_events`)
PRUNE_SLICE: Final = 10_000
#: SQLite page size of a new store (docs/daemon.md, "Performance")
PAGE_SIZE: Final = 65536


class StoreError(VigilError):
    """The store cannot be opened or written (disk full, locked, corrupt, newer schema)."""


class Store:
    """The SQLite store (see module docstring)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        incident_window_ms: int = book.DEFAULT_WINDOW_MS,
    ) -> None:
        self.path = Path(path)
        self.incident_window_ms = incident_window_ms
        self._lock = threading.RLock()
        self._group = GroupCommit(self._lock, self._transaction)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
            # (a new database only: an existing one keeps its page size) A batch of events is hundreds of
            # KB and every page costs WAL frame and checkpoint system calls; 64 KB pages made durable
            # ingestion about 1.5x faster here when the log kept a row per event
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._tx():
                schema.apply(self._db)  # (creates what is missing, migrates an older store)
            #: the newest sequence in the event log, kept here after each commit: the backlog check of
            #: every request and ``/metrics`` read it without waiting for the lock a commit holds
            self._last_seq = self._max_seq()
            self._cursors: dict[str, int] = {}
        except schema.NewerSchemaError as exc:
            raise StoreError(
                f"{self.path}: store schema {exc.args[0]} is newer than this Vigil ({schema.SCHEMA_VERSION})"
            ) from None
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the store: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    # -- transactions --------------------------------------------------------------------------------

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, kind: object, exc: object, tb: object) -> None:
            # A failed COMMIT (disk full, I/O error, busy) must not leave the connection inside a
            # transaction, or every later BEGIN fails; and SQLite may already have rolled back itself.
            if kind is None:
                try:
                    self.db.execute("COMMIT")
                    return
                except sqlite3.Error:
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")

    def _max_seq(self) -> int:
        return eventlog.last_seq(self._db)

    def _tx(self) -> Store._Tx:
        return Store._Tx(self._db)

    def _write(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` in a transaction, shared with the writes of other threads queued meanwhile
        (:mod:`vigil.store.group` says why); SQLite failures become :class:`StoreError`."""
        return self._group.submit(functools.partial(fn, *args))

    def _transaction(self, fn: Any) -> Any:
        """Run ``fn`` in one transaction. The lock keeps a transaction of one thread (an ingestion request in
        a worker) from interleaving with another's."""
        try:
            with self._lock, self._tx():
                return fn()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from exc

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from exc

    # -- the event log -------------------------------------------------------------------------------

    def append_events(self, events: Sequence[Event], source: str) -> tuple[int, int]:
        """Persist ``events`` in one transaction; (first seq, last seq) of those that were new, or (0, 0)."""
        seqs = [s for s in self.accept(events, (), source) if s]
        return (seqs[0], seqs[-1]) if seqs else (0, 0)

    # -- staging: a source's unit of work becomes visible all at once (staging.py) -------------------

    def stage(self, token: str, events: Sequence[Event], dead: Sequence[DeadLetter] = ()) -> None:
        """Hold ``events`` and ``dead`` letters under ``token`` (a file being read) without publishing
        them: the detector does not see them until :meth:`publish`, and :meth:`discard` forgets them."""
        if rows := staging.rows(token, events, dead):
            self._write(staging.insert, self._db, rows)

    def publish(self, token: str, source: str) -> int:
        """In one transaction: move everything staged under ``token`` into the event log and the dead
        letters, in order, and record the token as published. Returns the number of events published."""
        now = int(time.time() * 1000)

        def move() -> tuple[int, int]:
            count = staging.move(self._db, token, source, now)
            self._set_offset(staging.published_name(token), str(now))
            return count, self._max_seq()

        published, last = self._write(move)
        self._last_seq = max(self._last_seq, last)
        return int(published)

    def published(self, token: str) -> bool:
        return self.offset(staging.published_name(token)) is not None

    def discard(self, token: str) -> None:
        """Forget what is staged under ``token`` (the unit of work is being redone or abandoned)."""
        self._write(staging.discard, self._db, token)

    def forget_published(self, token: str) -> None:
        self._write(
            self._db.execute, "DELETE FROM offsets WHERE source = ?", (staging.published_name(token),)
        )

    def accept(
        self,
        events: Sequence[Event],
        dead: Sequence[DeadLetter],
        source: str,
        *,
        offset: tuple[str, str] | None = None,
        raw: RawBody | None = None,
    ) -> list[int]:
        """What one ingestion request (or one batch of a followed file) brought, in one transaction: new
        events into the log (duplicates of events already there are skipped), dead letters beside them and,
        when given, the source's new ``offset`` (name, value), so a crash can never keep one and lose
        another. The sequence numbers, aligned with ``events`` (0 for a duplicate).

        ``raw``: the bytes ``events`` are exactly the normalisation of (nothing changed them since); the
        log then keeps those bytes instead of encoding the events (:mod:`vigil.store.eventlog`).

        A dead letter identical to one accepted before (same source, reason, position and content: a client
        retrying a request whose answer it lost) is not stored twice; ``dead_letter_ids.repeats`` counts it.
        """
        now = int(time.time() * 1000)
        letters = letters_table.prepare(dead, source, now)
        batch = eventlog.pending(events, raw)

        def insert() -> list[int]:
            seqs = eventlog.insert(self._db, batch, source, now) if batch is not None else []
            letters_table.insert_new(self._db, letters)
            if offset is not None:
                self._set_offset(*offset)
            return seqs

        result: list[int] = self._write(insert)
        self._last_seq = max(self._last_seq, max(result, default=0))
        return result

    def read_events(self, after: int, limit: int = 1000) -> list[StoredEvent]:
        """Up to ``limit`` events with ``seq > after``, oldest first."""
        try:
            with self._lock:
                return eventlog.read(self._db, after, limit)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from exc

    def event(self, event_id: str) -> Event | None:
        """The stored event with this id, or None (never stored, or pruned by retention)."""
        try:
            with self._lock:
                return eventlog.lookup(self._db, event_id)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: read failed: {exc}") from exc

    def last_seq(self) -> int:
        """The newest sequence number in the event log (from memory: no query, no lock)."""
        return self._last_seq

    def count_events(self) -> int:
        with self._lock:
            return eventlog.count(self._db)

    def prune_events(self, received_before_ms: int, processed_through: int) -> int:
        """Drop raw events received before the cut-off that the detector has processed; how many.

        In slices of :data:`PRUNE_SLICE` events, oldest first, each its own transaction, with the lock let
        go in between: at 10,000 events/s a snapshot interval's worth of expired events is 300,000 rows, and
        one transaction for all of them would hold ingestion up for seconds."""

        removed = 0
        while True:
            n: int = self._write(eventlog.prune, self._db, received_before_ms, processed_through, PRUNE_SLICE)
            removed += n
            if n < PRUNE_SLICE:
                return removed

    # -- detection: findings, cursor and snapshot together -------------------------------------------

    def commit_detection(
        self,
        findings: Iterable[tuple[int, Finding]],
        cursor: int,
        snapshot: bytes | None,
        name: str = "detector",
        dead: Sequence[DeadLetter] = (),
    ) -> int:
        """In one transaction: insert the findings (those already present are skipped) and the dead letters
        of events detection failed on (one already stored is counted as a repeat), move the detector's
        cursor to ``cursor`` and, when given, replace its snapshot. Returns how many findings were new."""
        batch = found.rows(findings)
        letters = letters_table.prepare(dead, name, int(time.time() * 1000)) if dead else []

        def write() -> int:
            new_rows = found.fresh(self._db, batch)
            filed = book.attach(self._db, found.as_new(new_rows), self.incident_window_ms)
            found.insert(self._db, new_rows, filed)
            if letters:
                letters_table.insert_new(self._db, letters)
            new = len(new_rows)
            now = int(time.time() * 1000)
            if snapshot is not None:
                self._db.execute(
                    "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                    "cursor=excluded.cursor, saved_ms=excluded.saved_ms, body=excluded.body",
                    (name, cursor, now, snapshot),
                )
            self._set_offset(f"cursor:{name}", str(cursor))
            return new

        new: int = self._write(write)
        self._cursors[name] = cursor
        return new

    def cursor(self, name: str = "detector") -> int:
        """The last event sequence the named detector has committed (from memory once this store object
        committed it: ``/metrics`` must not wait for the lock a commit holds)."""
        known = self._cursors.get(name)
        if known is not None:
            return known
        value = self.offset(f"cursor:{name}")
        return int(value) if value is not None else 0

    def snapshot(self, name: str = "detector") -> tuple[int, bytes] | None:
        """(cursor, snapshot bytes) of the named detector's last snapshot."""
        rows = self._read("SELECT cursor, body FROM snapshots WHERE name = ?", (name,))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def findings(
        self, *, rule: str | None = None, since_ms: int = 0, limit: int = 100, incident: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest findings first (as JSON objects with their ``id`` and ``incident``)."""
        sql, args = found.query(rule, since_ms, limit, incident)
        return [
            {"id": fid, "incident": iid, **orjson.loads(body)} for fid, iid, body in self._read(sql, args)
        ]

    def count_findings(self) -> int:
        return int(self._read("SELECT count(*) FROM findings")[0][0])

    # -- incidents (vigil/store/incidents.py) --------------------------------------------------------

    def incidents(self, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Incidents, the most recently active first."""
        with self._lock:
            return book.listing(self._db, state, limit)

    def incident(self, iid: str) -> dict[str, Any] | None:
        """One incident with its timeline, or None."""
        with self._lock:
            return book.one(self._db, iid)

    def set_incident_state(self, iid: str, to: book.State, actor: str, note: str = "") -> dict[str, Any]:
        """Acknowledge or resolve an incident (IncidentError if unknown or not allowed)."""
        result: dict[str, Any] = self._write(book.transition, self._db, iid, to, actor, note)
        return result

    def prune_incidents(self, before_ms: int) -> tuple[int, int]:
        """Retention: :func:`incidents.prune` in steps of up to :data:`PRUNE_SLICE` findings, each its own
        transaction (as :meth:`prune_events`); (incidents, findings) deleted."""
        incidents = findings = 0
        while True:
            i, f = self._write(book.prune, self._db, before_ms, PRUNE_SLICE)
            incidents, findings = incidents + i, findings + f
            if not i and not f:
                return incidents, findings

    # -- dead letters and offsets --------------------------------------------------------------------

    def add_dead_letters(self, letters: Sequence[DeadLetter], source: str) -> None:
        self._write(letters_table.insert_all, self._db, letters, source, int(time.time() * 1000))

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        return letters_table.latest(self._read(letters_table.NEWEST, (limit,)))

    def offset(self, source: str) -> str | None:
        rows = self._read("SELECT value FROM offsets WHERE source = ?", (source,))
        return str(rows[0][0]) if rows else None

    def set_offset(self, source: str, value: str) -> None:
        self._write(self._set_offset, source, value)

    def _set_offset(self, source: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO offsets VALUES (?, ?) ON CONFLICT(source) DO UPDATE SET value=excluded.value",
            (source, value),
        )

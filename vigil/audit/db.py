"""The audit log's SQLite database: schema, the one-transaction append, and reads for show and verify.

Its own file (default ``{data_dir}/audit.db``), apart from the event store, for two reasons: its
durability is chosen independently (``synchronous=FULL`` by default, so a record that let an action run
survives power loss, while the event store may run ``NORMAL`` for ingestion speed), and its disk-full
behaviour is independent too: a full audit disk must stop the *actions* (fail closed), not ingestion,
and a flood of events filling the event store's disk must not silently stop auditing.

Invariants:

* An append is one ``BEGIN IMMEDIATE ... COMMIT`` (the event store's transaction helper): the head is read
  *inside* the transaction, the new records are chained onto it and inserted, and the commit makes all of
  them durable or none. A SIGKILL or a power cut at any point leaves a prefix of the intended log, never a
  torn record; a failed commit (disk full, I/O error) is rolled back, and the next append re-reads the
  committed head, so nothing in memory can fork the chain.
* ``records`` and ``checkpoints`` refuse UPDATE and DELETE through triggers. That stops bugs, not
  attackers (anyone who can write the file can drop a trigger); attackers are what the hash chain and the
  exported signed checkpoints are for.
* ``meta.log_id`` is a random id fixed at creation; the chain starts from ``genesis_hash(log_id)`` and
  every checkpoint names it as its origin.

The pragmas asked for are read back at open (reference/reliability.md G4): a build that silently ignores
``synchronous=FULL`` or WAL fails to open instead of running with weaker durability than configured.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from vigil.audit.checkpoint import Checkpoint
from vigil.audit.record import (
    Actor,
    ActorKind,
    AuditEntry,
    AuditKind,
    AuditRecord,
    build_record,
    genesis_hash,
    normalise_details,
)
from vigil.store.sqlite import Store

SCHEMA_VERSION: Final = 1
Synchronous = Literal["FULL", "NORMAL"]
_SYNC_LEVEL: Final = {"NORMAL": 1, "FULL": 2}

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, time_us INTEGER NOT NULL, mono_us INTEGER NOT NULL,
    actor_kind TEXT NOT NULL, actor_id TEXT NOT NULL, kind TEXT NOT NULL, subject TEXT NOT NULL,
    details TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_time ON records(time_us);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, seq);
CREATE INDEX IF NOT EXISTS records_subject ON records(subject, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY, origin TEXT NOT NULL, head BLOB NOT NULL, time_us INTEGER NOT NULL,
    key_name TEXT NOT NULL, key_version TEXT NOT NULL, signature BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END
"""
_COLUMNS: Final = "seq, time_us, mono_us, actor_kind, actor_id, kind, subject, details, prev_hash, hash"


class AuditDB:
    """The audit database at ``path``. Writable (created if missing) or ``readonly`` (for ``show`` and
    ``verify``: they never create, migrate or write the evidence they inspect). sqlite3.Error and OSError
    propagate; :class:`~vigil.audit.log.AuditLog` turns them into fail-closed errors."""

    def __init__(
        self, path: str | Path, *, synchronous: Synchronous = "FULL", readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no audit log at {self.path}")
            self._db = sqlite3.connect(
                self.path.absolute().as_uri() + "?mode=ro", uri=True, isolation_level=None, timeout=5.0
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            if not readonly:
                self._setup(synchronous)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
            if row is None:
                raise sqlite3.DatabaseError(f"{self.path} is not an audit log (no log id)")
            self.log_id: str = row[0]
        except BaseException:
            self._db.close()
            raise

    def _setup(self, synchronous: Synchronous) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        level = self._db.execute("PRAGMA synchronous").fetchone()[0]
        if str(mode).lower() != "wal" or level != _SYNC_LEVEL[synchronous]:
            raise sqlite3.OperationalError(
                f"SQLite refused journal_mode=WAL/synchronous={synchronous} (got {mode}/{level})"
            )
        with self._tx():
            for stmt in filter(str.strip, _SCHEMA.split(";\n")):
                self._db.execute(stmt)
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            if "schema" not in rows:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(rows["schema"]) > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"audit schema {rows['schema']} is newer than this Vigil")
            if "log_id" not in rows:
                self._db.execute("INSERT INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (fault tests set ``PRAGMA max_page_count`` on it)."""
        return self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> Store._Tx:
        return Store._Tx(self._db)

    # -- writing -----------------------------------------------------------------------------------------

    def append(self, entries: Sequence[AuditEntry], time_us: int, mono_us: int) -> list[AuditRecord]:
        """Chain ``entries`` onto the committed head and commit them in one transaction. Their details
        must already be free of secrets (the log replaced ``secrets`` by HMACs and checked them)."""
        prepared = [(e, normalise_details(e.details)) for e in entries]
        with self._lock, self._tx():
            seq, prev = self._head()
            records: list[AuditRecord] = []
            for entry, details in prepared:
                seq += 1
                rec = build_record(
                    seq, time_us, mono_us, entry.actor, entry.kind, entry.subject, details, prev
                )
                records.append(rec)
                prev = rec.hash
            self._db.executemany(
                f"INSERT INTO records ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(r) for r in records],
            )
            return records

    def add_checkpoint(self, cp: Checkpoint) -> None:
        with self._lock, self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cp.seq, cp.origin, cp.head, cp.time_us, cp.key_name, cp.key_version, cp.signature),
            )

    # -- reading -----------------------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last committed record; (0, genesis hash) for an empty log."""
        with self._lock:
            return self._head()

    def _head(self) -> tuple[int, bytes]:
        row = self._db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), bytes(row[1])) if row else (0, genesis_hash(self.log_id))

    def last_checkpoint(self) -> Checkpoint | None:
        cps = self.checkpoints(last=True)
        return cps[0] if cps else None

    def checkpoints(self, *, last: bool = False) -> list[Checkpoint]:
        sql = "SELECT seq, origin, head, time_us, key_name, key_version, signature FROM checkpoints"
        sql += " ORDER BY seq DESC LIMIT 1" if last else " ORDER BY seq"
        with self._lock:
            rows = self._db.execute(sql).fetchall()
        return [Checkpoint(int(r[0]), r[1], bytes(r[2]), int(r[3]), r[4], r[5], bytes(r[6])) for r in rows]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state, even while a daemon keeps appending (verify)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("ROLLBACK")

    def rows(self, batch: int = 1000) -> Iterator[tuple[Any, ...]]:
        """Every record row in ``seq`` order, raw (verify judges malformed rows itself)."""
        with self._lock:
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM records ORDER BY seq")
            while chunk := cur.fetchmany(batch):
                yield from chunk

    def seq_of_hash(self, digest: bytes) -> int | None:
        """The seq of the record stored with hash ``digest`` (a full scan: used only on damage)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM records WHERE hash = ? LIMIT 1", (digest,)).fetchone()
        return int(row[0]) if row else None

    def query(
        self,
        *,
        since_us: int | None = None,
        kind: str | None = None,
        subject: str | None = None,
        contains: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest ``limit`` records matching every filter given, oldest first (``show``)."""
        where, args = [], []
        for clause, value in (
            ("time_us >= ?", since_us),
            ("kind = ?", kind),
            ("subject = ?", subject),
            ("instr(details, ?) > 0", contains),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {_COLUMNS} FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [record_from_row(r) for r in reversed(rows)]


def _row(r: AuditRecord) -> tuple[Any, ...]:
    details = orjson.dumps(r.details, option=orjson.OPT_SORT_KEYS).decode()
    return (
        r.seq, r.time_us, r.mono_us, r.actor.kind.value, r.actor.id, r.kind.value, r.subject, details,
        r.prev_hash, r.hash,
    )  # fmt: skip


def record_from_row(row: Sequence[Any]) -> AuditRecord:
    """A stored row as a record; ValueError when a field is malformed (a damaged or forged row)."""
    seq, time_us, mono_us, actor_kind, actor_id, kind, subject, details, prev_hash, digest = row
    try:
        parsed = orjson.loads(details)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"details are not JSON: {exc}") from None
    if not isinstance(parsed, dict) or not isinstance(prev_hash, bytes) or not isinstance(digest, bytes):
        raise ValueError("malformed record row")
    if not all(isinstance(v, int) for v in (seq, time_us, mono_us)):
        raise ValueError("malformed record row")
    if not all(isinstance(v, str) for v in (actor_id, subject)):
        raise ValueError("malformed record row")
    actor = Actor(ActorKind(actor_kind), actor_id)
    return AuditRecord(seq, time_us, mono_us, actor, AuditKind(kind), subject, parsed, prev_hash, digest)

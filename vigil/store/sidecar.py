"""A component's own tables in the daemon's store database, on a connection of its own.

The response engine's actions (:mod:`vigil.response.store`) and the alert outbox (:mod:`vigil.alerts.outbox`)
live in the same SQLite file as the event log, but not in its transactions: idempotency there comes from keys,
not from sharing a commit with the hot ingestion path. Each opens its own connection (WAL, a busy timeout so
it waits for the event log's writer instead of failing), creates its tables if missing, records its schema
version in the shared ``meta`` table under its own key, and refuses a newer one. This base class is that
opening, the locked ``BEGIN IMMEDIATE`` transaction and the locked read; SQLite failures become
:class:`~vigil.store.sqlite.StoreError` naming the file and the component.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from vigil.store.sqlite import StoreError


class SidecarTables:
    """Subclasses set :attr:`SCHEMA` (statements separated by ``;``), :attr:`SCHEMA_KEY` (its ``meta`` key),
    :attr:`SCHEMA_VERSION` and :attr:`WHAT` (the component's name in messages)."""

    SCHEMA: ClassVar[str]
    SCHEMA_KEY: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int]
    WHAT: ClassVar[str]

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            with self._tx():
                for stmt in filter(str.strip, self.SCHEMA.split(";")):
                    self._db.execute(stmt)
                row = self._db.execute("SELECT value FROM meta WHERE key = ?", (self.SCHEMA_KEY,)).fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta VALUES (?, ?)", (self.SCHEMA_KEY, str(self.SCHEMA_VERSION))
                    )
                elif int(row[0]) > self.SCHEMA_VERSION:
                    raise StoreError(f"{self.path}: {self.WHAT} schema {row[0]} is newer than this Vigil")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the {self.WHAT}: {exc}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the lock; SQLite failures become StoreError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                finally:
                    if self._db.in_transaction:  # an error above, or a failed COMMIT
                        self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {self.WHAT} write failed: {exc}") from exc

    def _read(self, sql: str, args: Iterable[Any] = ()) -> builtins.list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, tuple(args)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {self.WHAT} read failed: {exc}") from exc


def read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the store at ``path`` for a stage that follows its tables (findings,
    actions) after a cursor of its own; it waits for the writer rather than failing while one commits."""
    uri = path.resolve().as_uri() + "?mode=ro"  # as_uri escapes '?' and '#' in file names
    db = sqlite3.connect(uri, uri=True, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=5000")
    return db

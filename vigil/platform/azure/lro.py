"""Long-running ARM operations that survive a crash: the continuation token is on disk before the wait.

A VM deallocate is a ``POST`` answered ``202`` with an operation URL; the VM reaches ``deallocated`` minutes
later. If the daemon dies during that wait and the remediation is resumed, sending the ``POST`` again is the
wrong answer (it is an action, not a state, and a second one can race the first). So :func:`run_lro` stores
the poller's continuation token (azure-core's JSON form: the operation URLs and the initial response, no
credential) under a stable key *before* it waits, and a later call with the same key resumes polling from
the token instead of calling ``begin``. The key names the operation and its target
(``<subscription>/<group>/<vm>/deallocate``), so two remediations of the same VM share one operation.

The store is one small SQLite table in the data directory, written with ``synchronous=FULL`` so a token
acknowledged here outlives a power cut. A token is deleted once its operation ends, successfully or not.
If the operation a token names is gone (ARM forgets finished operations after a while; polling then
answers 404), :class:`OperationLostError` tells the caller to reconcile by reading the resource's state.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from azure.core.exceptions import HttpResponseError
from azure.core.polling import AsyncLROPoller

from vigil.platform.errors import PlatformError, UnavailableError

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    key TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    started REAL NOT NULL
);
"""


class OperationLostError(PlatformError):
    """A persisted operation can no longer be polled; read the resource's state to learn its outcome."""

    code = "operation_lost"


class LroStore:
    """Continuation tokens of in-flight operations, by key (thread-safe; one connection per store)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT token FROM operations WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, token: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO operations (key, token, started) VALUES (?, ?, ?)",
                (key, token, time.time()),
            )

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM operations WHERE key = ?", (key,))

    def pending(self) -> list[str]:
        """Keys of operations begun and not seen to end (for status pages and resumption at start-up)."""
        with self._lock:
            rows = self._db.execute("SELECT key FROM operations ORDER BY started").fetchall()
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


async def run_lro(
    store: LroStore,
    key: str,
    begin: Callable[[], Awaitable[AsyncLROPoller[T]]],
    resume: Callable[[str], Awaitable[AsyncLROPoller[T]]],
    *,
    timeout: float,
) -> T:
    """Start the operation ``key`` with ``begin`` (or resume it with ``resume(token)`` when a token is
    stored), persist its token before waiting, wait at most ``timeout`` seconds, forget the token.

    Cancellation (a crash, a shutdown) leaves the token in place: that is the point. ``UnavailableError``
    when the wait times out (the token stays, a later call resumes); :class:`OperationLostError` when a
    resumed token's operation cannot be polled any more (the token is dropped)."""
    token = store.get(key)
    if token is not None:
        try:
            poller = await resume(token)
        except (ValueError, HttpResponseError):
            store.delete(key)
            raise OperationLostError(f"operation {key}: its stored continuation token is unusable") from None
    else:
        poller = await begin()
        store.put(key, poller.continuation_token())
    try:
        result = await asyncio.wait_for(poller.result(), timeout)
    except TimeoutError:
        raise UnavailableError(
            f"operation {key}: not finished after {timeout:.0f}s; it will be resumed"
        ) from None
    except HttpResponseError as exc:
        store.delete(key)
        if token is not None and exc.status_code == 404:
            raise OperationLostError(f"operation {key}: ARM no longer knows it") from None
        raise
    store.delete(key)
    return result

"""Log Analytics source: Microsoft Sentinel's ``SecurityAlert`` and ``SecurityIncident`` tables, polled.

:class:`LogsPoller` asks ``LogsQueryClient.query_workspace`` (azure-monitor-query's async client;
reference/azure.md §5.4) every ``interval`` seconds for one table's rows ingested since its cursor
(:mod:`vigil.streams.loganalytics_cursor`: an ingestion-time high-water mark, an overlap for rows that
arrive out of order, and the identities of rows already taken). Each new row goes through the existing
normalizer of its table (``sentinel-alert``, ``sentinel-incident``), and the events, the dead letters and
the new cursor commit in **one** store transaction, so a restart resumes exactly where the last commit left
off: nothing read twice into the log, nothing skipped.

The query (``{table}`` and the bound filled in; ``>=`` when the last page was full)::

    SecurityAlert
    | where ingestion_time() > datetime(2026-11-24T09:35:00.000000Z)
    | extend _Ingested = ingestion_time()
    | top 5000 by _Ingested asc

Rows are not summarised with ``arg_max``: every version of an alert (``New``, then ``Resolved``) is an
event of its own, and the cursor's seen-set drops only exact re-reads. ``timespan`` (which filters on
``TimeGenerated``) is set wide, from ``max_delay`` before the bound to an hour ahead, so a row ingested late
is not hidden by it.

**Partial results.** A ``LogsQueryPartialResult`` (HTTP 200 with both ``tables`` and ``error``: a row or
size limit hit, a shard that failed) says nothing about *which* rows are missing. Its rows are taken (and
remembered in the seen-set), the error is logged and counted, and the watermark does **not** move, so the
next poll asks for the same window again and gets what was missing; the page is halved each time so a
result that was too large fits (and grows back afterwards). A full page made only of re-reads (more rows
ingested at the watermark's instant than a page holds) doubles the page, so paging always progresses.
A failed query (``HttpResponseError``: throttling, auth, a bad workspace id) is logged, counted and
retried with a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from azure.core.exceptions import HttpResponseError
from azure.monitor.query import LogsQueryPartialResult, LogsTable
from azure.monitor.query.aio import LogsQueryClient

from vigil.events.batch import BatchNormalizer, Result
from vigil.events.model import Event
from vigil.store.sqlite import Store, StoreError
from vigil.streams.loganalytics_cursor import Cursor, iso

log = logging.getLogger(__name__)

#: the column the query adds: the row's ingestion time, the cursor's clock
INGESTED: Final = "_Ingested"
MIN_PAGE: Final = 100
#: the service's row limit per query
MAX_PAGE: Final = 500_000
MAX_RETRY_SECONDS: Final = 300.0
PARTIAL_RETRY_SECONDS: Final = 5.0


@dataclass(frozen=True)
class TableSpec:
    """One table: its identity columns, the column that versions a row, and the normalizer for it."""

    table: str
    #: the first of these that is set identifies the row's object
    keys: tuple[str, ...]
    version: str
    format: str


SECURITY_ALERT: Final = TableSpec("SecurityAlert", ("SystemAlertId",), "TimeGenerated", "sentinel-alert")
SECURITY_INCIDENT: Final = TableSpec(
    "SecurityIncident", ("IncidentName", "IncidentNumber"), "LastModifiedTime", "sentinel-incident"
)
TABLES: Final = {t.table: t for t in (SECURITY_ALERT, SECURITY_INCIDENT)}


@dataclass(frozen=True)
class PollerSpec:
    """Where and how often to poll (durations as timedeltas, ``interval`` in seconds)."""

    #: the workspace GUID (customerId), not its ARM id
    workspace_id: str
    interval: float = 60.0
    overlap: timedelta = timedelta(minutes=5)
    #: how far back the very first poll (no stored cursor) reaches
    first_lookback: timedelta = timedelta(days=1)
    #: how long after ``TimeGenerated`` a row may still be ingested (widens ``timespan``)
    max_delay: timedelta = timedelta(days=2)
    page: int = 5000
    max_seen: int = 50_000
    server_timeout: int = 120


@dataclass
class PollStats:
    """What one table's poller has done; exported by ``/metrics`` and ``/v1/status``."""

    running: bool = False
    polls: int = 0
    rows: int = 0
    #: rows of the overlap already taken (recognised by the seen-set, not stored again)
    reread: int = 0
    events: int = 0
    #: rows whose event the store already held (a seen-set entry dropped early)
    duplicates: int = 0
    dead_letters: int = 0
    partial_results: int = 0
    failures: int = 0
    watermark: str | None = None
    last_poll_at: float | None = None
    last_error: str | None = None

    def counters(self) -> dict[str, int]:
        return {
            "polls": self.polls,
            "rows": self.rows,
            "reread": self.reread,
            "events": self.events,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "partial_results": self.partial_results,
            "failures": self.failures,
        }


@dataclass
class _Poll:
    """One query's outcome, before it is committed."""

    result: Result = field(default_factory=Result)
    taken: list[tuple[str, datetime]] = field(default_factory=list)
    newest: datetime | None = None
    rows: int = 0
    reread: int = 0
    partial: str | None = None


class LogsPoller:
    """Polls one table of one workspace into the store (see the module docstring)."""

    def __init__(
        self,
        client: LogsQueryClient,
        spec: PollerSpec,
        table: TableSpec,
        store: Store,
        stats: PollStats | None = None,
        *,
        offer: Callable[[Sequence[int], Sequence[Event]], None] | None = None,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.spec = spec
        self.table = table
        self.store = store
        self.stats = stats if stats is not None else PollStats()
        self.source = f"loganalytics:{table.table}"
        #: the store offset holding this table's cursor
        self.offset_key = f"loganalytics:{spec.workspace_id}:{table.table}"
        self.page = spec.page
        self._offer = offer
        self._wake = wake
        self._clock = clock
        self._normalizer = BatchNormalizer(table.format)
        self._cursor: Cursor | None = None
        #: the last poll got a partial result
        self._partial = False

    def cursor(self) -> Cursor:
        """The cursor, read from the store the first time."""
        if self._cursor is None:
            self._cursor = Cursor.from_json(self.store.offset(self.offset_key))
        return self._cursor

    def query(self, start: datetime, inclusive: bool) -> str:
        op = ">=" if inclusive else ">"
        return (
            f"{self.table.table}\n| where ingestion_time() {op} datetime({iso(start)})\n"
            f"| extend {INGESTED} = ingestion_time()\n| top {self.page} by {INGESTED} asc"
        )

    async def poll_once(self) -> int:
        """One query, its new rows committed with the advanced cursor; the number of new events stored.
        Raises ``HttpResponseError`` when the query fails and :class:`StoreError` when the commit does."""
        cursor = await asyncio.to_thread(self.cursor)
        now = self._clock()
        start, inclusive = cursor.lower_bound(now, self.spec.overlap, self.spec.first_lookback)
        response = await self.client.query_workspace(
            self.spec.workspace_id,
            self.query(start, inclusive),
            timespan=(start - self.spec.max_delay, now + timedelta(hours=1)),
            server_timeout=self.spec.server_timeout,
        )
        poll = _Poll()
        if isinstance(response, LogsQueryPartialResult):
            tables = response.partial_data
            err = response.partial_error
            poll.partial = f"{getattr(err, 'code', 'PartialError')}: {getattr(err, 'message', err)}"
        else:
            tables = response.tables
        for table in tables:
            self._take(table, cursor, poll)
        return await asyncio.to_thread(self._commit, cursor, poll)

    def _take(self, table: LogsTable, cursor: Cursor, poll: _Poll) -> None:
        """Normalise the rows not taken before; note their identities and the newest ingestion time."""
        columns = list(table.columns)
        for row in table.rows:
            record = {name: _plain(value) for name, value in zip(columns, row, strict=False)}
            ingested = row[INGESTED] if INGESTED in columns else None
            record.pop(INGESTED, None)
            poll.rows += 1
            if isinstance(ingested, datetime):
                poll.newest = ingested if poll.newest is None else max(poll.newest, ingested)
            key = self._identity(record)
            if key is not None and key in cursor.seen:
                poll.reread += 1
                continue
            self._normalizer.feed_value(
                record, f"{self.source}@{record.get(self.table.version)}", 0, 0, poll.result
            )
            if key is not None and isinstance(ingested, datetime):
                poll.taken.append((key, ingested))

    def _identity(self, record: dict[str, Any]) -> str | None:
        obj = next((record[k] for k in self.table.keys if record.get(k) not in (None, "")), None)
        if obj is None:
            return None
        return f"{obj}|{record.get(self.table.version)}"

    def _commit(self, cursor: Cursor, poll: _Poll) -> int:
        """(Worker thread.) Events, dead letters and the new cursor in one transaction."""
        spec = self.spec
        full = poll.rows >= self.page
        updated = Cursor(cursor.watermark, dict(cursor.seen), cursor.full)
        # a partial result keeps the watermark: what is missing may lie anywhere in the window
        updated.advance(poll.taken, None if poll.partial else poll.newest, full and not poll.partial)
        updated.prune(spec.overlap, spec.max_seen)
        result = poll.result
        seqs = self.store.accept(
            result.events, result.dead, self.source, offset=(self.offset_key, updated.to_json())
        )
        self._cursor = updated
        self._partial = poll.partial is not None
        stats = self.stats
        new = len(seqs) - seqs.count(0)
        stats.polls += 1
        stats.rows += poll.rows
        stats.reread += poll.reread
        stats.events += new
        stats.duplicates += seqs.count(0)
        stats.dead_letters += len(result.dead)
        stats.watermark = iso(updated.watermark) if updated.watermark else None
        if poll.partial:
            stats.partial_results += 1
            self.page = max(MIN_PAGE, self.page // 2)
            log.warning(
                "%s: partial result (%d rows taken, cursor kept at %s, next page %d rows): %s",
                self.table.table,
                poll.rows,
                stats.watermark,
                self.page,
                poll.partial,
            )
        elif full and not poll.taken:
            # a full page of re-reads: more rows share the watermark's instant than a page holds
            self.page = min(MAX_PAGE, self.page * 2)
        elif not full:
            self.page = min(spec.page, self.page * 2) if self.page < spec.page else spec.page
        if result.dead:
            log.warning(
                "%s: %d rows dead-lettered (first: %s)",
                self.table.table,
                len(result.dead),
                result.dead[0].reason,
            )
        if result.events and self._offer is not None:
            self._offer(seqs, result.events)
        if result.events and self._wake is not None:
            self._wake()
        return new

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll every ``interval`` seconds (at once again after a full page or a partial result) until
        ``stopping`` is set; failures are logged, counted and retried with a back-off, never raised."""
        stats = self.stats
        stats.running = True
        delay = 0.0
        try:
            while not stopping.is_set():
                wait = self.spec.interval
                try:
                    await self.poll_once()
                except (HttpResponseError, StoreError, ValueError, OSError) as exc:
                    stats.failures += 1
                    delay = min(max(delay * 2, self.spec.interval), MAX_RETRY_SECONDS)
                    wait = delay
                    message = f"{type(exc).__name__}: {exc}"
                    level = logging.DEBUG if message == stats.last_error else logging.ERROR
                    log.log(
                        level, "%s: poll failed (retrying in %.0f s): %s", self.table.table, wait, message
                    )
                    stats.last_error = message
                else:
                    delay = 0.0
                    stats.last_error = None
                    if self._partial:  # ask again soon for what was missing, not in a tight loop
                        wait = min(wait, PARTIAL_RETRY_SECONDS)
                    elif self.cursor().full:  # a backlog: the next page at once
                        wait = 0.0
                stats.last_poll_at = self._clock().timestamp()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=wait)
        finally:
            stats.running = False


def _plain(value: Any) -> Any:
    """A query value as the normalizers expect it in a row: datetimes as ISO-8601 text."""
    if isinstance(value, datetime):
        return iso(value)
    return value


__all__ = [
    "SECURITY_ALERT",
    "SECURITY_INCIDENT",
    "TABLES",
    "LogsPoller",
    "PollStats",
    "PollerSpec",
    "TableSpec",
]

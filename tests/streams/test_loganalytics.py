"""The Log Analytics poller with the real ``LogsQueryClient`` over HTTPS against a loopback fake of the query
API (tests/streams/fake_loganalytics.py) and the real store: the cursor survives a restart, the overlap's
re-reads are dropped, late rows and new versions come through, a partial result loses nothing, a backlog
is paged through, and a failing query is counted and retried."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from azure.core.exceptions import HttpResponseError
from azure.monitor.query.aio import LogsQueryClient

from tests.conftest import EVENT_FIXTURES
from tests.streams.fake_loganalytics import FakeLogAnalytics, StaticCredential, self_signed, serve
from vigil.store.sqlite import Store
from vigil.streams.loganalytics import SECURITY_ALERT, SECURITY_INCIDENT, LogsPoller, PollerSpec, TableSpec
from vigil.streams.loganalytics_cursor import Cursor

WORKSPACE = "5c0de1a4-77b2-4e0f-9d6a-1b2c3d4e5f60"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SPEC = PollerSpec(WORKSPACE, interval=0.05, overlap=timedelta(minutes=5))
_ALERT = json.loads((EVENT_FIXTURES / "sentinel" / "good_security_alert_row.json").read_bytes())
_INCIDENTS = json.loads((EVENT_FIXTURES / "sentinel" / "good_security_incident_export.json").read_bytes())[
    "records"
]
T = TypeVar("T")


def alert(n: int, *, status: str = "New", minute: int = 0) -> dict[str, Any]:
    row: dict[str, Any] = copy.deepcopy(_ALERT)
    row["SystemAlertId"] = f"2f6c1a7e-9b3d-4e21-8c5f-{n:012d}"
    row["Status"] = status
    row["TimeGenerated"] = (
        (T0 + timedelta(minutes=minute) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    )
    return row


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def run(
    tmp_path: Path,
    fake: FakeLogAnalytics,
    body: Callable[[Callable[[TableSpec, PollerSpec], Awaitable[LogsPoller]]], Awaitable[T]],
) -> T:
    """Serve ``fake`` over TLS and run ``body`` with a maker of pollers (a fresh store connection and client
    each time: a restart) that are closed afterwards."""
    cert, key = self_signed(tmp_path)

    async def main() -> T:
        runner = await serve(fake, cert, key)
        opened: list[tuple[LogsQueryClient, Store]] = []

        async def poller(table: TableSpec = SECURITY_ALERT, spec: PollerSpec = SPEC) -> LogsPoller:
            client = LogsQueryClient(StaticCredential(), endpoint=fake.url, connection_verify=str(cert))
            store = Store(tmp_path / "vigil.db")
            opened.append((client, store))
            return LogsPoller(client, spec, table, store, clock=lambda: NOW)

        try:
            return await body(poller)
        finally:
            for client, store in opened:
                await client.close()
                store.close()
            await runner.cleanup()

    return asyncio.run(main())


def stored(tmp_path: Path) -> list[str]:
    store = Store(tmp_path / "vigil.db")
    try:
        return [s.event.id for s in store.read_events(0, 10_000)]
    finally:
        store.close()


def test_cursor_persists_across_a_restart_and_the_overlap_is_deduped(tmp_path: Path) -> None:
    fake = FakeLogAnalytics(WORKSPACE)
    for n in range(3):
        fake.add("SecurityAlert", at(n), alert(n, minute=n))

    async def body(make: Callable[..., Awaitable[LogsPoller]]) -> LogsPoller:
        first = await make()
        assert await first.poll_once() == 3
        # restart: a new store connection and client read the cursor the first one committed
        fake.add("SecurityAlert", at(4), alert(3, minute=4))  # new
        fake.add("SecurityAlert", at(1.5), alert(4, minute=1))  # late: ingested inside the overlap
        fake.add("SecurityAlert", at(5), alert(0, status="Resolved", minute=5))  # a new version of alert 0
        second = await make()
        assert second.cursor().watermark == at(2)
        assert await second.poll_once() == 3
        assert await second.poll_once() == 0  # everything again inside the overlap: all re-reads
        return second

    second = run(tmp_path, fake, body)
    ids = stored(tmp_path)
    assert len(ids) == len(set(ids)) == 6
    assert "sa:2f6c1a7e-9b3d-4e21-8c5f-000000000000:resolved" in ids
    # the restarted poller asked from the stored watermark minus the overlap, not from the first lookback
    assert (
        fake.requests[1]["query"].split("\n")[1]
        == "| where ingestion_time() > datetime(2026-11-24T09:57:00.000000Z)"
    )
    assert (
        fake.requests[0]["query"].split("\n")[1]
        == "| where ingestion_time() > datetime(2026-11-23T12:00:00.000000Z)"
    )
    # alerts 1 and 2 were re-read inside the overlap and dropped by the seen-set, not by the store
    assert second.stats.reread >= 2 and second.stats.duplicates == 0
    assert second.stats.watermark == "2026-11-24T10:05:00.000000Z"
    # the seen-set keeps only what the overlap can still return
    cursor = second.cursor()
    assert all(v >= "2026-11-24T10:00:00" for v in cursor.seen.values())


def test_partial_result_does_not_lose_rows(tmp_path: Path) -> None:
    fake = FakeLogAnalytics(WORKSPACE, partial_next=1)
    for n in range(6):
        fake.add("SecurityAlert", at(n), alert(n, minute=n))

    async def body(make: Callable[..., Awaitable[LogsPoller]]) -> LogsPoller:
        poller = await make()
        assert await poller.poll_once() == 3  # the half the partial answer held
        assert poller.cursor().watermark is None  # not advanced past what was missing
        assert poller.page == SPEC.page // 2
        assert await poller.poll_once() == 3  # the rest; the first three are re-reads
        assert poller.stats.reread == 3
        restarted = await make()  # the cursor (with its seen-set) is durable
        assert await restarted.poll_once() == 0
        assert restarted.stats.reread == 5  # everything ingested after watermark - overlap
        return restarted

    poller = run(tmp_path, fake, body)
    assert len(stored(tmp_path)) == 6
    assert poller.cursor().watermark == at(5)
    # the retry asked for the same window (the watermark did not move) with half the page
    first, retry = (r["query"].split("\n") for r in fake.requests[:2])
    assert first[1] == retry[1]
    assert (first[3], retry[3]) == (
        f"| top {SPEC.page} by _Ingested asc",
        f"| top {SPEC.page // 2} by _Ingested asc",
    )


def test_a_backlog_is_paged_through(tmp_path: Path) -> None:
    """A page of 2 rows and 5 rows, two of them ingested at the same instant at the page boundary."""
    fake = FakeLogAnalytics(WORKSPACE)
    for n, minute in enumerate([0, 1, 2, 2, 3]):
        fake.add("SecurityAlert", at(minute), alert(n, minute=minute))
    spec = PollerSpec(WORKSPACE, page=2, overlap=timedelta(minutes=5))

    async def body(make: Callable[..., Awaitable[LogsPoller]]) -> int:
        poller = await make(SECURITY_ALERT, spec)
        total = 0
        for _ in range(5):
            total += await poller.poll_once()
        return total

    assert run(tmp_path, fake, body) == 5
    assert len(stored(tmp_path)) == 5
    # after a full page the next query starts at the watermark itself
    assert "| where ingestion_time() >= datetime(2026-11-24T10:01:00.000000Z)" in fake.requests[1]["query"]


def test_incident_versions_are_events_and_rereads_are_not(tmp_path: Path) -> None:
    fake = FakeLogAnalytics(WORKSPACE)
    for i, row in enumerate(_INCIDENTS):
        fake.add("SecurityIncident", at(i), row)

    async def body(make: Callable[..., Awaitable[LogsPoller]]) -> LogsPoller:
        poller = await make(SECURITY_INCIDENT)
        assert await poller.poll_once() == len(_INCIDENTS)
        assert await poller.poll_once() == 0
        return poller

    poller = run(tmp_path, fake, body)
    assert poller.stats.reread == len(_INCIDENTS)
    assert fake.requests[0]["query"].startswith("SecurityIncident\n")
    assert len(set(stored(tmp_path))) == len(_INCIDENTS) == 2


def test_failing_queries_are_counted_and_retried(tmp_path: Path) -> None:
    fake = FakeLogAnalytics("another-workspace")  # every query answers 404

    async def body(make: Callable[..., Awaitable[LogsPoller]]) -> LogsPoller:
        poller = await make(SECURITY_ALERT, PollerSpec(WORKSPACE, interval=0.05))
        with pytest.raises(HttpResponseError):
            await poller.poll_once()
        stopping = asyncio.Event()
        task = asyncio.create_task(poller.run(stopping))
        await asyncio.sleep(0.5)
        stopping.set()
        await asyncio.wait_for(task, 10)
        return poller

    poller = run(tmp_path, fake, body)
    assert poller.stats.failures >= 2 and poller.stats.polls == 0
    assert "no such workspace" in str(poller.stats.last_error)
    assert poller.cursor().watermark is None


def test_cursor_round_trip_and_unreadable_cursor() -> None:
    cursor = Cursor(at(3), {"a|x": "2026-11-24T10:03:00.000000Z"}, True)
    assert Cursor.from_json(cursor.to_json()) == cursor
    assert Cursor.from_json(None) == Cursor()
    with pytest.raises(ValueError, match="unreadable"):
        Cursor.from_json('{"watermark": "yesterday"}')

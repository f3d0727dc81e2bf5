"""The sink workers against real HTTP on loopback: Retry-After honoured with nothing lost, 400 dead at once,
a dead or slow sink delaying nobody else, the retry horizon, rate limits, a full queue losing nothing.

:class:`LoopServer` is a tiny threaded HTTP server that answers each POST with what a script says and keeps
a ledger; :class:`LoopSink` is a minimal sink that POSTs the alert's JSON to it. Both are imported by the
other test modules of this package (and by the crash test's worker process). Time-heavy scenarios (429 for
60 s, a one-hour rate limit, a one-day horizon) run on a fake clock whose ``sleep`` advances it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alerts.fakes import ROUTING_KEY, FakePagerDuty, FakeTeams, Rule, sample_alert
from vigil.alerts import dispatcher as dispatcher_mod
from vigil.alerts.dispatcher import AlertDispatcher
from vigil.alerts.grouping import Grouper
from vigil.alerts.model import Alert, AlertKind, Delivery, Sink, dedup_key
from vigil.alerts.outbox import Outbox, OutboxState
from vigil.alerts.pagerduty import PagerDutySink
from vigil.alerts.teams import TeamsSink
from vigil.alerts.worker import RateLimit

Respond = Callable[[int, dict[str, Any]], tuple[int, dict[str, str]]]


class FakeClock:
    """A clock for the worker, the outbox and the server; ``sleep`` moves it instead of waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += max(0.0, delay)
        await asyncio.sleep(0.0005)  # real time for the loop's other tasks (the HTTP round trips)


class LoopServer:
    """HTTP on 127.0.0.1: ``respond(n, body)`` gives each POST's status and headers (n counts from 0);
    ``ledger`` keeps (time, body, status) of every request, ``delay`` slows every answer."""

    def __init__(self, respond: Respond | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.respond: Respond = respond or (lambda n, body: (202, {}))
        self.clock = clock
        self.delay = 0.0
        self.ledger: list[tuple[float, dict[str, Any], int]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with outer._lock:
                    status, headers = outer.respond(len(outer.ledger), body)
                    outer.ledger.append((outer.clock(), body, status))
                if outer.delay:
                    time.sleep(outer.delay)
                payload = b'{"status": "ok"}' if status < 300 else b'{"message": "no"}'
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict[str, Any]]:
        return [body for _, body, status in self.ledger if status < 300]


class LoopSink(Sink):
    """POST the alert's JSON to ``config["url"]``: 2xx sent, 429/5xx retry (Retry-After), other 4xx dead."""

    kind = "loop"

    def render(self, alert: Alert) -> dict[str, Any]:
        return alert.to_json()

    async def send(self, client: httpx.AsyncClient, alert: Alert) -> Delivery:
        try:
            r = await client.post(self.config["url"], json=self.render(alert))
        except httpx.HTTPError as exc:
            return Delivery("retry", f"{type(exc).__name__}")
        if r.status_code < 300:
            return Delivery("sent", status=r.status_code)
        if r.status_code == 429 or r.status_code >= 500:
            after = r.headers.get("retry-after")
            return Delivery("retry", f"HTTP {r.status_code}", float(after) if after else None, r.status_code)
        return Delivery("dead", f"HTTP {r.status_code}: {r.text}", status=r.status_code)


def alert(n: int, *, rule: str = "t.rule", kind: AlertKind = AlertKind.TRIGGER, when: float = 0.0) -> Alert:
    return Alert(
        kind=kind, dedup_key=dedup_key(rule, f"g{n}"), rule=rule, title=f"alert {n}", severity="high",
        summary=f"alert number {n}", time=when or time.time(), group={"ip": f"203.0.113.{n % 250}"},
    )  # fmt: skip


def refused_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


async def drive(dispatcher: AlertDispatcher, done: Callable[[], bool], timeout: float = 10.0) -> float:
    """Run the dispatcher until ``done()`` (polled in real time) or ``timeout``, then stop it; the seconds
    it took until ``done()``."""
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    start = time.monotonic()
    while not done() and time.monotonic() < start + timeout and not task.done():
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - start
    stop.set()
    await asyncio.wait_for(task, 10)
    return elapsed


def states(outbox: Outbox, sink: str) -> dict[str, int]:
    stats = outbox.stats(sink).get(sink, {})
    return {s.value: int(stats.get(s.value, 0)) for s in OutboxState}


def run(scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            await scenario(client)

    asyncio.run(main())


# -- the acceptance scenarios ----------------------------------------------------------------------------


def test_429_for_60s_then_202_delivers_everything_and_honours_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    t0 = clock.now

    def respond(n: int, body: dict[str, Any]) -> tuple[int, dict[str, str]]:
        return (429, {"Retry-After": "25"}) if clock.now < t0 + 60 else (202, {})

    outbox = Outbox(tmp_path / "vigil.db", clock=clock)

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer(respond, clock=clock) as server:
            sink = LoopSink("pd", {"url": server.url})
            d = AlertDispatcher(
                outbox, {"pd": sink}, client, clock=clock, sleep=clock.sleep, rng=random.Random(7)
            )
            for n in range(20):
                await d.submit(["pd"], alert(n, when=t0))
            await drive(d, lambda: states(outbox, "pd")["sent"] == 20)
            stats = d.stats()["pd"]
        assert states(outbox, "pd") == {"pending": 0, "sending": 0, "sent": 20, "dead": 0}
        keys = [body["dedup_key"] for body in server.accepted()]
        assert sorted(keys) == sorted(alert(n).dedup_key for n in range(20))  # each once: nothing lost
        times = [(t, status) for t, _, status in server.ledger]
        rejected = [t for t, status in times if status == 429]
        assert len(rejected) == 3  # t0, t0+25, t0+50: one request per Retry-After, not one per alert
        for (t, status), (t_next, _) in itertools.pairwise(times):
            if status == 429:
                assert t_next - t >= 25  # the gap the server asked for
        assert times[len(rejected)][0] >= t0 + 60
        assert stats["retried"] == 3 and stats["sent"] == 20 and stats["dead"] == 0
        assert outbox.list(state="sent", limit=1)[0].attempts == 1
        first = outbox.get(1)
        assert first is not None and first.attempts == 4 and first.last_status == 202

    run(scenario)


def test_400_is_dead_at_once_without_retry(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer(lambda n, body: (400, {})) as server:
            d = AlertDispatcher(
                outbox, {"pd": LoopSink("pd", {"url": server.url})}, client, backoff_base=0.01
            )
            for n in range(3):
                await d.submit(["pd"], alert(n))
            await drive(d, lambda: states(outbox, "pd")["dead"] == 3)
            await asyncio.sleep(0.05)
            assert len(server.ledger) == 3  # one request each: never retried
            stats = d.stats()["pd"]
        assert stats["dead"] == 3 and stats["retried"] == 0 and stats["sent"] == 0
        assert stats["outbox"]["dead"] == 3 and stats["oldest_pending_age"] is None
        for entry in outbox.list(sink="pd"):
            assert entry.state is OutboxState.DEAD and entry.attempts == 1 and entry.last_status == 400
            assert entry.last_error.startswith("HTTP 400")

    run(scenario)


def test_a_dead_or_slow_sink_does_not_delay_another(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer() as slow, LoopServer() as good:
            slow.delay = 2.0  # Teams answering slowly
            sinks = {
                "dead": LoopSink("dead", {"url": refused_url()}),  # Teams down: connection refused
                "slow": LoopSink("slow", {"url": slow.url}),
                "good": LoopSink("good", {"url": good.url}),  # PagerDuty
            }
            d = AlertDispatcher(outbox, sinks, client, backoff_base=0.05, backoff_max=0.2)
            for n in range(10):
                await d.submit(["dead", "slow", "good"], alert(n))
            elapsed = await drive(d, lambda: states(outbox, "good")["sent"] == 10, timeout=5)
            stats = d.stats()
        assert states(outbox, "good")["sent"] == 10
        assert elapsed < 1.5, elapsed  # less than one slow answer: nothing waited for the other sinks
        assert stats["dead"]["retried"] >= 1 and stats["dead"]["sent"] == 0
        assert stats["dead"]["outbox"]["pending"] == 10  # kept, not dropped
        assert stats["slow"]["sent"] <= 1 and stats["slow"]["outbox"]["pending"] >= 9

    run(scenario)


def test_retry_horizon_makes_a_dead_letter_with_the_alarm_counter(tmp_path: Path, caplog: Any) -> None:
    clock = FakeClock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer(lambda n, body: (503, {})) as server:
            d = AlertDispatcher(
                outbox, {"pd": LoopSink("pd", {"url": server.url})}, client, backoff_base=10.0,
                backoff_max=120.0, horizon=3600.0, clock=clock, sleep=clock.sleep, rng=random.Random(3),
            )  # fmt: skip
            await d.submit(["pd"], alert(1))
            with caplog.at_level(logging.WARNING, logger="vigil.alerts"):
                await drive(d, lambda: states(outbox, "pd")["dead"] == 1)
            stats = d.stats()["pd"]
            attempts = len(server.ledger)
        (entry,) = outbox.list(sink="pd")
        assert entry.state is OutboxState.DEAD and entry.last_error == "retry horizon passed: HTTP 503"
        assert entry.last_status == 503 and entry.attempts == attempts > 5  # it kept trying until then
        assert stats["dead"] == 1 and stats["expired"] == 1 and stats["retried"] in (attempts - 1, attempts)
        assert "dead letter" in caplog.text and "retry horizon passed" in caplog.text
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(server.ledger)]
        assert max(gaps) <= 120.0 + 1e-6  # backoff_max caps the wait

    run(scenario)


def test_rate_limits_wait_and_never_drop(tmp_path: Path) -> None:
    clock = FakeClock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)

    class Teams(LoopSink):
        per_second = 4.0
        per_hour = 10.0

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer(clock=clock) as server:
            d = AlertDispatcher(
                outbox, {"teams": Teams("teams", {"url": server.url})}, client, clock=clock, sleep=clock.sleep
            )
            for n in range(12):
                await d.submit(["teams"], alert(n))
            await drive(d, lambda: states(outbox, "teams")["sent"] == 12)
        times = [t for t, _, _ in server.ledger]
        assert len(times) == 12
        assert all(b - a >= 1.0 for a, b in zip(times, times[4:], strict=False))  # <= 4 in any second
        assert times[10] - times[0] >= 3600.0  # <= 10 in any hour: the 11th waited
        assert [body["title"] for body in server.accepted()] == [f"alert {n}" for n in range(12)]  # in order

    run(scenario)


def test_a_full_queue_loses_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer() as server:
            d = AlertDispatcher(outbox, {"s": LoopSink("s", {"url": server.url})}, client, queue_size=2)
            for n in range(10):
                await d.submit(["s"], alert(n))
            assert d.stats()["s"]["queue_overflow"] == 8
            await drive(d, lambda: states(outbox, "s")["sent"] == 10)
        assert len(server.accepted()) == 10

    run(scenario)


def test_a_failing_sink_is_retried_and_its_secret_never_logged(tmp_path: Path, caplog: Any) -> None:
    outbox = Outbox(tmp_path / "vigil.db")
    canary = "sig=CANARYsecretVALUE0123456789"

    class Broken(LoopSink):
        calls = 0

        async def send(self, client: httpx.AsyncClient, alert: Alert) -> Delivery:
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError(f"bug while posting to https://x.example/hook?{canary}")
            return await super().send(client, alert)

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer() as server:
            d = AlertDispatcher(outbox, {"s": Broken("s", {"url": server.url})}, client, backoff_base=0.01)
            await d.submit(["s"], alert(1))
            with caplog.at_level(logging.INFO, logger="vigil.alerts"):
                await drive(d, lambda: states(outbox, "s")["sent"] == 1)
        (entry,) = outbox.list()
        assert entry.state is OutboxState.SENT and entry.attempts == 2
        assert "RuntimeError" in caplog.text and "CANARY" not in caplog.text

    run(scenario)


def test_submit_refuses_unknown_sinks_and_stores_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        d = AlertDispatcher(outbox, {"s": LoopSink("s", {"url": refused_url()})}, client)
        with pytest.raises(ValueError, match="nope"):
            await d.submit(["s", "nope"], alert(1))
        assert outbox.list() == []
        assert await d.submit(["s", "s"], alert(1)) == [1]  # one row per sink, however often named
        with pytest.raises(ValueError, match="another name"):
            AlertDispatcher(outbox, {"x": LoopSink("s", {"url": ""})}, client)

    run(scenario)


def test_rate_limit_windows() -> None:
    assert RateLimit.of(None, 1.0) is None and RateLimit.of(0, 1.0) is None
    half = RateLimit.of(0.5, 1.0)
    assert half is not None and (half.limit, half.period) == (1, 2.0)
    hourly = RateLimit.of(100, 3600.0)
    assert hourly is not None and (hourly.limit, hourly.period) == (100, 3600.0)
    odd = RateLimit.of(2.5, 1.0)
    assert odd is not None and (odd.limit, odd.period) == (2, 0.8)
    limit = RateLimit(2, 1.0)
    assert limit.wait(0.0) == 0.0
    limit.record(0.0)
    limit.record(0.25)
    assert limit.wait(0.5) == pytest.approx(0.5)
    assert limit.wait(1.0) == 0.0


# -- the same acceptance scenarios with the real sinks against the loopback fakes ---------------------------


def _pd(fake: FakePagerDuty, name: str = "pd") -> PagerDutySink:
    return PagerDutySink(name, {"routing_key": ROUTING_KEY, "url": fake.enqueue_url})


def _alerts(n: int) -> list[Alert]:
    return [
        sample_alert(dedup_key=dedup_key("skr.noncompliant", f"g{i}"), title=f"finding {i}") for i in range(n)
    ]


def test_pagerduty_429_for_60s_then_recovery_one_incident_per_alert(tmp_path: Path) -> None:
    """Reliability D1 through the worker: delivered = all, incidents = distinct alerts, Retry-After kept."""
    clock = FakeClock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)
    alerts = _alerts(10)

    async def scenario(client: httpx.AsyncClient) -> None:
        with FakePagerDuty(clock=clock) as pd:
            pd.script(Rule(status=429, headers={"Retry-After": "20"}, for_seconds=60))
            d = AlertDispatcher(
                outbox, {"pd": _pd(pd)}, client, clock=clock, sleep=clock.sleep, rng=random.Random(2)
            )
            t0 = clock.now
            for a in alerts:
                await d.submit(["pd"], a)
            await drive(d, lambda: states(outbox, "pd")["sent"] == 10)
            received = pd.received()
            for a in alerts:
                assert len(pd.incidents_for(a.dedup_key)) == 1
        assert [r.status for r in received].count(429) == 3  # one try per Retry-After: t0, +20, +40
        assert all(b.at - a.at >= 20 for a, b in itertools.pairwise(received) if a.status == 429)
        accepted = [r.at for r in received if r.status == 202]
        assert len(accepted) == 10 and min(accepted) >= t0 + 60
        assert max(accepted) - t0 <= 60 + 20 + 5  # delay: the window, one Retry-After, the 2/s rate limit
        assert all(b - a >= 1.0 for a, b in zip(accepted, accepted[2:], strict=False))  # <= 2 per second

    run(scenario)


def test_pagerduty_400_is_dead_lettered_without_retry(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with FakePagerDuty() as pd:
            pd.script(
                Rule(status=400, body={"status": "invalid event", "message": "Event object is invalid"})
            )
            d = AlertDispatcher(outbox, {"pd": _pd(pd)}, client, backoff_base=0.01)
            await d.submit(["pd"], sample_alert())
            await drive(d, lambda: states(outbox, "pd")["dead"] == 1)
            assert len(pd.received()) == 1 and d.stats()["pd"]["retried"] == 0
        (entry,) = outbox.list()
        assert entry.last_status == 400 and "Event object is invalid" in entry.last_error
        assert ROUTING_KEY not in entry.last_error

    run(scenario)


def test_teams_down_does_not_delay_pagerduty(tmp_path: Path) -> None:
    """Reliability D4: Teams slow, then failing for 10 minutes; PagerDuty pages at once."""
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with FakePagerDuty() as pd, FakeTeams() as teams:
            teams.script(Rule(status=503, delay=2.0, times=1))  # the first request hangs, then ...
            teams.script(Rule(status=503, for_seconds=600))  # ... 10 minutes of 503
            sinks = {"pd": _pd(pd), "teams": TeamsSink("teams", {"url": teams.webhook_url})}
            d = AlertDispatcher(outbox, sinks, client, backoff_base=0.05, backoff_max=0.2)
            for a in _alerts(2):
                await d.submit(["teams", "pd"], a)
            elapsed = await drive(d, lambda: states(outbox, "pd")["sent"] == 2, timeout=5)
            assert len(pd.incidents) == 2 and teams.posted == []
        assert elapsed < 1.5, elapsed
        assert states(outbox, "teams")["pending"] == 2  # kept for when Teams is back

    run(scenario)


def test_reset_after_acceptance_is_one_incident_through_the_worker(tmp_path: Path) -> None:
    """Reliability D3: PagerDuty applies the event, the answer is lost; the worker's retry reuses the key."""
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with FakePagerDuty() as pd:
            pd.script(Rule(reset=True, times=1))
            d = AlertDispatcher(outbox, {"pd": _pd(pd)}, client, backoff_base=0.01)
            await d.submit(["pd"], sample_alert())
            await drive(d, lambda: states(outbox, "pd")["sent"] == 1)
            (incident,) = pd.incidents_for(sample_alert().dedup_key)
            assert [r.status for r in pd.received()] == [None, 202] and len(incident.events) == 2
        assert outbox.list()[0].attempts == 2

    run(scenario)


def test_trigger_then_resolve_cycle_through_grouper_and_worker(tmp_path: Path) -> None:
    """Findings page once (the rest held), a verified remediation resolves the page, nothing re-opens it."""
    outbox = Outbox(tmp_path / "vigil.db")
    grouper = Grouper(window=60.0)
    key = sample_alert().dedup_key

    async def scenario(client: httpx.AsyncClient) -> None:
        with FakePagerDuty() as pd:
            d = AlertDispatcher(outbox, {"pd": _pd(pd)}, client)
            for i in range(5):
                for out in grouper.offer(sample_alert(summary=f"finding {i}", time=time.time())):
                    await d.submit(["pd"], out)
            resolve = sample_alert(kind=AlertKind.RESOLVE, title="key.rotate verified", time=time.time())
            for out in grouper.offer(resolve) + grouper.flush(time.time() + 3600):
                await d.submit(["pd"], out)
            await drive(d, lambda: states(outbox, "pd")["sent"] == 2)
            (incident,) = pd.incidents_for(key)
            assert incident.state == "resolved"
            assert [e["event_action"] for e in incident.events] == ["trigger", "resolve"]

    run(scenario)


def test_a_sink_with_a_full_outbox_sheds_only_low_severity_triggers_and_counts_them(tmp_path: Path) -> None:
    """Reliability D4: a sink that is down keeps every alert up to ``max_waiting``; past that, new low and
    informational triggers for that sink are counted and left out, everything else is still kept, and a
    sink with room is not affected."""
    outbox = Outbox(tmp_path / "vigil.db")

    def shaped(n: int, severity: str, kind: AlertKind = AlertKind.TRIGGER) -> Alert:
        return dataclasses.replace(alert(n, kind=kind), severity=severity)

    async def scenario(client: httpx.AsyncClient) -> None:
        sinks = {
            "down": LoopSink("down", {"url": refused_url()}),
            "ok": LoopSink("ok", {"url": refused_url()}),
        }
        d = AlertDispatcher(outbox, sinks, client, max_waiting=3)  # (not run: nothing is delivered)
        for n in range(3):
            assert len(await d.submit(["down"], shaped(n, "low"))) == 1  # up to the bound: kept
        assert await d.submit(["down"], shaped(3, "low")) == []  # full: shed
        assert await d.submit(["down"], shaped(4, "informational")) == []
        assert len(await d.submit(["down", "ok"], shaped(5, "low"))) == 1  # only the full sink sheds
        assert len(await d.submit(["down"], shaped(6, "medium"))) == 1  # medium and above: kept
        assert len(await d.submit(["down"], shaped(7, "critical"))) == 1
        assert len(await d.submit(["down"], shaped(0, "low", AlertKind.RESOLVE))) == 1  # not a trigger
        stats = d.stats()
        assert stats["down"]["shed"] == 3 and stats["ok"]["shed"] == 0
        assert states(outbox, "down")["pending"] == 6 and states(outbox, "ok")["pending"] == 1
        unbounded = AlertDispatcher(outbox, sinks, client)  # max_waiting 0: never sheds
        assert len(await unbounded.submit(["down"], shaped(8, "low"))) == 1

    run(scenario)


def test_delivered_alerts_older_than_keep_sent_are_deleted_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An always-on daemon leaves a row per alert: delivered ones go after ``keep_sent`` (at start and then
    periodically, in slices of short transactions), while undelivered and dead rows stay however old."""
    monkeypatch.setattr(dispatcher_mod, "PRUNE_SLICE", 3)
    clock = FakeClock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)
    old_sent, old_pending, old_dead = (outbox.enqueue("s", alert(n)) for n in range(3))
    more_old = [outbox.enqueue("s", alert(n)) for n in range(10, 17)]  # 8 old delivered rows in all
    for entry in (old_sent, old_dead, *more_old, new_sent := outbox.enqueue("s", alert(3))):
        assert outbox.mark_sending(entry)
    assert outbox.mark_sent(old_sent, 202) and outbox.mark_dead(old_dead, "400 from the sink", 400)
    assert all(outbox.mark_sent(entry, 202) for entry in more_old)
    clock.now += 8 * 86400  # a week and a day later
    assert outbox.mark_sent(new_sent, 202)

    async def scenario(client: httpx.AsyncClient) -> None:
        d = AlertDispatcher(outbox, {}, client, keep_sent=7 * 86400, clock=clock, sleep=clock.sleep)
        stop = asyncio.Event()
        task = asyncio.ensure_future(d.run(stop))
        for _ in range(200):
            if d.pruned:
                break
            await asyncio.sleep(0.01)
        assert d.pruned == 8  # three slices of at most 3 in one round
        assert outbox.get(old_sent) is None and not any(outbox.get(i) for i in more_old)
        kept = {old_pending: "pending", old_dead: "dead", new_sent: "sent"}
        assert {i: outbox.get(i).state.value for i in kept} == kept  # type: ignore[union-attr]
        clock.now += 7 * 86400  # a week on, the next round deletes the newer delivered row too
        for _ in range(200):
            if d.pruned == 9:
                break
            await asyncio.sleep(0.01)
        assert d.pruned == 9 and outbox.get(new_sent) is None
        stop.set()
        await asyncio.wait_for(task, 5)
        assert outbox.get(old_pending) is not None and outbox.get(old_dead) is not None

    run(scenario)


def test_a_batch_of_alerts_is_judged_and_stored_as_if_one_by_one(tmp_path: Path) -> None:
    """``submit_many`` (one alert stage step) stores a batch in one transaction, and sheds exactly what the
    same alerts submitted one by one would: rows kept earlier in the batch count toward ``max_waiting``."""

    def shaped(n: int, severity: str) -> Alert:
        return dataclasses.replace(alert(n), severity=severity)

    batch = [shaped(0, "medium"), shaped(1, "low"), shaped(2, "low"), shaped(3, "high"), shaped(4, "low")]

    async def scenario(client: httpx.AsyncClient) -> None:
        results = {}
        for how in ("batch", "one by one"):
            outbox = Outbox(tmp_path / f"{how}.db")
            sinks = {"down": LoopSink("down", {"url": refused_url()})}
            d = AlertDispatcher(outbox, sinks, client, max_waiting=2)  # (not run: nothing is delivered)
            if how == "batch":
                ids = await d.submit_many([(["down"], a) for a in batch])
            else:
                ids = [await d.submit(["down"], a) for a in batch]
            kept = [a.title for a, got in zip(batch, ids, strict=True) if got]
            results[how] = (kept, d.stats()["down"]["shed"], states(outbox, "down")["pending"])
            if how == "batch":
                flat = [i for got in ids for i in got]
                assert flat == list(range(flat[0], flat[0] + len(flat)))  # one transaction, in order
                with pytest.raises(ValueError, match="nowhere"):
                    await d.submit_many([(["down"], batch[0]), (["nowhere"], batch[1])])
                assert states(outbox, "down")["pending"] == len(flat)  # nothing of a refused batch
        assert results["batch"] == results["one by one"]
        assert results["batch"] == (["alert 0", "alert 1", "alert 3"], 2, 3)

    run(scenario)


def test_a_dead_letter_is_raised_on_the_other_sinks_once_a_minute(tmp_path: Path) -> None:
    """Reliability D2: PagerDuty refusing a page for good (400) is not only a counter: the other sinks get
    a notice naming the sink, the alert and the reason; a burst of dead letters is one notice (the next
    counts the rest), and a notice that is itself refused raises nothing further."""
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with (
            LoopServer(lambda n, body: (400, {"error": "summary too long"})) as pd,
            LoopServer(lambda n, body: (200, {})) as teams,
        ):
            sinks = {"pd": LoopSink("pd", {"url": pd.url}), "teams": LoopSink("teams", {"url": teams.url})}
            d = AlertDispatcher(outbox, sinks, client, backoff_base=0.01)
            for n in range(3):
                await d.submit(["pd"], alert(n))
            await drive(d, lambda: states(outbox, "pd")["dead"] == 3 and states(outbox, "teams")["sent"] == 1)
            await asyncio.sleep(0.05)
            notices = [body for _, body, _ in teams.ledger]
        [notice] = notices
        assert notice["kind"] == "notice" and notice["rule"] == "vigil.alert-dead-letter"
        assert notice["title"] == "alerts to pd are failing" and notice["severity"] == "high"
        assert notice["summary"].startswith("pd refused alert 1 (alert 0): HTTP 400")
        assert states(outbox, "pd")["dead"] == 3 and states(outbox, "teams")["dead"] == 0

    run(scenario)


def test_a_refused_dead_letter_notice_raises_nothing_further(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer(lambda n, body: (400, {})) as pd, LoopServer(lambda n, body: (400, {})) as teams:
            sinks = {"pd": LoopSink("pd", {"url": pd.url}), "teams": LoopSink("teams", {"url": teams.url})}
            d = AlertDispatcher(outbox, sinks, client, backoff_base=0.01)
            await d.submit(["pd"], alert(1))
            await drive(d, lambda: states(outbox, "teams")["dead"] == 1)
            await asyncio.sleep(0.1)
            assert (len(pd.ledger), len(teams.ledger)) == (1, 1)  # no notice about the notice
        assert states(outbox, "pd")["dead"] == 1

    run(scenario)


class WallClock:
    """Wall time: a monotonic fake plus an offset that a test steps (NTP, ``date -s``)."""

    def __init__(self, mono: FakeClock) -> None:
        self.mono = mono
        self.offset = 0.0

    def __call__(self) -> float:
        return self.mono() + self.offset


def test_a_wall_clock_step_back_does_not_stretch_a_rate_limit(tmp_path: Path) -> None:
    """Reliability I2: the sink's rate limit runs on the monotonic clock. On wall time, a step back of five
    minutes right after a send would have held the next alert for five minutes and a second."""
    mono = FakeClock()
    wall = WallClock(mono)
    outbox = Outbox(tmp_path / "vigil.db", clock=wall)

    class Teams(LoopSink):
        per_second = 1.0

    async def scenario(client: httpx.AsyncClient) -> None:
        with LoopServer(clock=mono) as server:
            d = AlertDispatcher(
                outbox,
                {"teams": Teams("teams", {"url": server.url})},
                client,
                clock=wall,
                monotonic=mono,
                sleep=mono.sleep,
            )
            await d.submit(["teams"], alert(0))
            await drive(d, lambda: states(outbox, "teams")["sent"] == 1)
            wall.offset -= 300.0
            await d.submit(["teams"], alert(1))
            await drive(d, lambda: states(outbox, "teams")["sent"] == 2)
            first, second = (t for t, _, _ in server.ledger)
        assert second - first < 5.0

    run(scenario)

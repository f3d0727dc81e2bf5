"""The alarm: the daemon's degraded state reaches the sinks straight from memory (no outbox, no disk), once
per change: a trigger that pages, then the resolve that closes the page."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tests.alerts.fakes import ROUTING_KEY, FakePagerDuty
from tests.alerts.test_worker import refused_url
from vigil.alerts.alarm import RULE, Alarm
from vigil.alerts.model import Alert, Delivery, Sink
from vigil.alerts.pagerduty import PagerDutySink
from vigil.alerts.webhook import WebhookSink


class Health:
    """What the daemon would report: None when healthy, else why it is degraded."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self) -> str | None:
        return self.reason


class Broken(Sink):
    """A sink whose code raises (a bug): the alarm still reaches the others."""

    kind = "broken"

    def render(self, alert: Alert) -> dict[str, Any]:
        return {}

    async def send(self, client: httpx.AsyncClient, alert: Alert) -> Delivery:
        raise RuntimeError("sink bug")


def test_degraded_pages_once_and_recovery_resolves_the_page() -> None:
    health = Health()

    async def scenario() -> Alarm:
        with FakePagerDuty() as pd:
            sinks: dict[str, Sink] = {
                "pd": PagerDutySink("pd", {"routing_key": ROUTING_KEY, "url": pd.enqueue_url}),
                "down": WebhookSink("down", {"url": refused_url(), "secret": "s" * 32}),
                "broken": Broken("broken", {}),
            }
            async with httpx.AsyncClient(timeout=5) as client:
                alarm = Alarm(health, sinks, client, backoff=0.01)
                await alarm.check()  # healthy: nothing
                assert pd.incidents == []
                health.reason = "audit log unavailable: disk full (sqlite: database or disk is full)"
                await alarm.check()
                [incident] = pd.incidents_for(alarm.key)
                assert incident.state == "triggered"
                payload = incident.events[0]["payload"]
                assert payload["severity"] == "critical" and "degraded" in payload["summary"]
                assert "disk full" in json.dumps(payload)  # the reason travels with it
                health.reason = "audit log unavailable: another reason"  # still degraded: not news
                await alarm.check()
                assert len(incident.events) == 1
                health.reason = None
                await alarm.check()
                assert incident.state == "resolved" and len(pd.incidents) == 1
        return alarm

    alarm = asyncio.run(scenario())
    stats = alarm.stats
    assert (stats.raised, stats.cleared) == (1, 1)
    assert stats.sent == 2  # PagerDuty, both times
    assert stats.failed == 4  # the refused webhook and the broken sink, both times, after their retries
    assert RULE == "vigil.degraded"


def test_run_checks_until_stopped_and_a_failing_health_check_is_a_reason() -> None:
    calls = 0

    def failing() -> str | None:
        nonlocal calls
        calls += 1
        raise OSError("disk I/O error")

    async def scenario() -> Alarm:
        async with httpx.AsyncClient() as client:
            alarm = Alarm(failing, {}, client, every=0.01)
            stop = asyncio.Event()
            task = asyncio.create_task(alarm.run(stop))
            await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(task, 5)
        return alarm

    alarm = asyncio.run(scenario())
    assert calls >= 3 and alarm.stats.raised == 1  # raised once however often it is seen

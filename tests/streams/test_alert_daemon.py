"""Alerting through a real ``vigil run``: events in over HTTP, pages out to a loopback fake PagerDuty and the
console sink. One daemon for the module; each scenario has its own rule."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.alerts.fakes import ROUTING_KEY, FakePagerDuty
from tests.conftest import wait_until
from tests.streams.test_embedded import COMMANDS, Daemon
from vigil.alerts.model import dedup_key
from vigil.platform.client import PlatformClient
from vigil.platform.storage import Lock

CANARY = "CANARYsig0123456789abcdefXYZ"
RULES = """\
id: t.leak-lock
title: Container leaking data
status: stable
severity: high
kind: generic
match: action == "container.leak"
actions:
  - alert: [pagerduty]
  - remediate: lock_storage
    target: "{{ resource.id }}"
    approval: auto
tests:
  - {name: fires, events: [{kind: generic, action: container.leak}], expect: {findings: 1}}
---
id: t.sas-seen
title: SAS URL seen
status: test
severity: medium
kind: generic
match: action == "sas.seen"
actions:
  - alert: [pagerduty, console]
tests:
  - {name: fires, events: [{kind: generic, action: sas.seen}], expect: {findings: 1}}
---
id: t.storm
title: Storm of matches
status: test
severity: low
kind: generic
match: action == "storm.match"
actions:
  - alert: [pagerduty, console]
tests:
  - {name: fires, events: [{kind: generic, action: storm.match}], expect: {findings: 1}}
"""


class Running:
    def __init__(self, base: str, work: Path, daemon: Daemon, pagerduty: FakePagerDuty) -> None:
        self.base, self.work, self.daemon, self.pagerduty = base, work, daemon, pagerduty
        self.ingest = (work / "var" / "ingest.token").read_text().strip()
        self.operator = (work / "var" / "platform" / "operator.token").read_text().strip()

    def post(self, events: list[dict[str, Any]]) -> None:
        body = b"\n".join(orjson.dumps(e) for e in events)
        auth = {"Authorization": f"Bearer {self.ingest}"}
        r = httpx.post(f"{self.base}/v1/events", content=body, headers=auth, timeout=60)
        assert r.status_code == 200, r.text

    def console(self) -> list[dict[str, Any]]:
        path = self.work / "var" / "alerts.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []

    def platform(self, fn: Callable[[PlatformClient], Any]) -> Any:
        async def call() -> Any:
            async with PlatformClient(self.base, self.operator) as client:
                return await fn(client)

        return asyncio.run(call())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("alerts")
    (work / "rules.yaml").write_text(RULES, encoding="utf-8")
    with FakePagerDuty() as pagerduty:
        (work / "profile.yaml").write_text(
            "data_dir: var\nhttp:\n  port: 0\ndetect:\n  rules: rules.yaml\n"
            "response:\n  batch_window: 0.2\n"
            f"alerts:\n  pagerduty:\n    routing_key: {ROUTING_KEY}\n    url: {pagerduty.enqueue_url}\n"
            "  group_window: 30\n",
            encoding="utf-8",
        )
        proc = Daemon([*COMMANDS["cli"], str(work / "profile.yaml")], work)
        try:
            base = proc.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
            yield Running(base, work, proc, pagerduty)
        finally:
            proc.stop()


def _wait(check: Callable[[], object], what: str, deadline: float = 30.0) -> None:
    wait_until(check, what, deadline=deadline)


def _event(i: str, action: str, **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()  # older than alerts.stale_after would be summarised as a backlog
    return {"id": i, "kind": "generic", "action": action, "time": now, **fields}


def test_a_page_is_triggered_then_resolved_when_the_remediation_verifies(daemon: Running) -> None:
    daemon.platform(lambda c: c.keys.create_key("vigil", "leak-key"))
    daemon.platform(lambda c: c.storage.create_container("vigil", "leaking", key_name="leak-key"))
    daemon.post([_event("leak-1", "container.leak", resource={"id": "leaking"})])
    key = dedup_key("t.leak-lock", "leaking")
    _wait(
        lambda: [i.state for i in daemon.pagerduty.incidents_for(key)] == ["resolved"], "trigger then resolve"
    )
    incident = daemon.pagerduty.incidents_for(key)[0]
    assert [e["event_action"] for e in incident.events] == ["trigger", "resolve"]
    assert incident.events[0]["payload"]["severity"] == "error"
    assert daemon.platform(lambda c: c.storage.get_container("vigil", "leaking")).lock is Lock.READ_ONLY
    # the trigger names the incident its finding was filed into, and links to it
    store = daemon.work / "var" / "vigil.db"
    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        (iid,) = db.execute("SELECT id FROM incidents WHERE rule = 't.leak-lock'").fetchone()
    hrefs = [link["href"] for link in incident.events[0].get("links", [])]
    assert any(h.endswith(f"/v1/incidents/{iid}") for h in hrefs), hrefs


def test_a_canary_secret_in_an_event_never_reaches_a_sink(daemon: Running) -> None:
    url = f"https://acct.blob.core.windows.net/data/blob?sv=2022-11-02&se=2026-12-01&sig={CANARY}"
    daemon.post([_event("sas-1", "sas.seen", resource={"id": url}, labels={"auth": f"Bearer {CANARY}"})])
    _wait(lambda: any(r["rule"] == "t.sas-seen" for r in daemon.console()), "the console alert")
    _wait(
        lambda: any(b"t.sas-seen" in r.body for r in daemon.pagerduty.received()),
        "the page",
    )
    pages = b"".join(r.body for r in daemon.pagerduty.received())
    console = (daemon.work / "var" / "alerts.jsonl").read_bytes()
    outbox = httpx.get(f"{daemon.base}/v1/alerts", params={"limit": 1000}).content
    for where, text in (("pagerduty", pages), ("console", console), ("GET /v1/alerts", outbox)):
        assert CANARY.encode() not in text, f"the canary reached {where}"
    assert b"[REDACTED]" in console
    log = daemon.daemon.read_log()
    assert CANARY not in log and ROUTING_KEY not in log


def test_five_thousand_matches_in_a_minute_become_at_most_ten_notifications_per_sink(daemon: Running) -> None:
    before_pd = len(daemon.pagerduty.received("/v2/enqueue"))
    events = [_event(f"s-{i}", "storm.match", resource={"id": f"blob-{i % 800}"}) for i in range(5000)]
    for start in range(0, 5000, 1000):
        daemon.post(events[start : start + 1000])
    _wait(
        lambda: (
            "vigil_detect_events_total" in httpx.get(f"{daemon.base}/metrics").text
            and len([r for r in daemon.console() if r["rule"] == "t.storm"]) >= 1
        ),
        "the first storm alerts",
    )
    time.sleep(3)  # let the stage read every finding
    storm_console = [r for r in daemon.console() if r["rule"] == "t.storm"]
    storm_pages = len(daemon.pagerduty.received("/v2/enqueue")) - before_pd
    assert 1 <= len(storm_console) <= 10 and storm_pages <= 10, (len(storm_console), storm_pages)
    status = httpx.get(f"{daemon.base}/v1/alerts").json()
    assert status["stage"]["grouping"]["storm_folded"] > 0

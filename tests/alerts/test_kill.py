"""Crash safety of alert delivery (reliability D7, D3): a process is killed (SIGKILL) at the ``alerts.*``
crash points and a second process finishes the work.

* killed after the enqueue committed, before any send → after the restart the alert is sent exactly once;
* killed after the sink accepted, before :meth:`Outbox.mark_sent` → sent again after the restart: the fake's
  ledger shows two requests with one dedup key. That is the at-least-once contract: PagerDuty folds events
  with one ``dedup_key`` into one incident, so the on-call engineer sees one page, not two.

The worker process is this module's ``WORKER`` script (``python -c``), run from the repository root so it can
import the fakes' routing key and sample alert; the fake PagerDuty (:mod:`tests.alerts.fakes`, with its
dedup semantics) runs in the test process, so its ledger and incidents span both processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.alerts.fakes import FakePagerDuty, sample_alert
from vigil.alerts.outbox import Outbox, OutboxState
from vigil.streams.crash import POINTS

ROOT = Path(__file__).resolve().parents[2]

#: argv: database, sink URL, "submit" (submit one alert, then deliver) or "deliver" (deliver what is there)
WORKER = """
import asyncio
import sys
from pathlib import Path

import httpx

from tests.alerts.fakes import ROUTING_KEY, sample_alert
from vigil.alerts.outbox import Outbox
from vigil.alerts.pagerduty import PagerDutySink
from vigil.alerts.dispatcher import AlertDispatcher

db, url, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
outbox = Outbox(db)


async def main() -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        sink = PagerDutySink("pd", {"routing_key": ROUTING_KEY, "url": url})
        dispatcher = AlertDispatcher(outbox, {"pd": sink}, client)
        if mode == "submit":
            await dispatcher.submit(["pd"], sample_alert())
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        await asyncio.sleep(0)  # run() recovers first
        while any(outbox.stats("pd").get("pd", {}).get(s, 0) for s in ("pending", "sending")):
            await asyncio.sleep(0.01)
        stop.set()
        await task


asyncio.run(main())
print("delivered")
"""


def _run(db: Path, url: str, mode: str, crash_at: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    if crash_at:
        env["VIGIL_CRASH_AT"] = crash_at
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(db), url, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def _entry_states(db: Path) -> list[tuple[OutboxState, int]]:
    outbox = Outbox(db)
    try:
        return [(e.state, e.attempts) for e in outbox.list()]
    finally:
        outbox.close()


def test_the_alert_points_are_registered() -> None:
    assert {"alerts.after_enqueue", "alerts.after_send"} <= set(POINTS)


def test_killed_after_enqueue_before_send_is_sent_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "vigil.db"
    with FakePagerDuty() as pd:
        url = pd.enqueue_url
        assert _run(db, url, "submit", "alerts.after_enqueue") == -signal.SIGKILL
        assert pd.received() == []  # killed before any send ...
        assert _entry_states(db) == [(OutboxState.PENDING, 0)]  # ... but the alert was durable
        assert _run(db, url, "deliver") == 0
        assert _run(db, url, "deliver") == 0  # a further restart sends nothing again
        assert [r.json()["dedup_key"] for r in pd.received()] == [sample_alert().dedup_key]  # exactly once
        assert len(pd.incidents) == 1
    assert _entry_states(db) == [(OutboxState.SENT, 1)]


def test_killed_after_the_sink_accepted_is_resent_with_the_same_dedup_key(tmp_path: Path) -> None:
    db = tmp_path / "vigil.db"
    with FakePagerDuty() as pd:
        url = pd.enqueue_url
        assert _run(db, url, "submit", "alerts.after_send") == -signal.SIGKILL
        assert [r.status for r in pd.received()] == [202]
        assert _entry_states(db) == [(OutboxState.SENDING, 1)]  # accepted, but not recorded as sent
        assert _run(db, url, "deliver") == 0
        assert _run(db, url, "deliver") == 0
        received = pd.received()
        (incident,) = pd.incidents  # two requests with one dedup key: one incident, one page
    assert [r.status for r in received] == [202, 202]
    assert {r.json()["dedup_key"] for r in received} == {sample_alert().dedup_key}
    assert received[0].json() == received[1].json() and len(incident.events) == 2
    assert _entry_states(db) == [(OutboxState.SENT, 2)]

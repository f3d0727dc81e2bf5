"""An ingest burst into a real ``vigil run`` whose alert sink is slow (reliability matrix A14).

The burst: a file of Activity Log records dropped in the drop folder at once (the default suite: 50,000,
about a hundred times the soak test's steady 500 a second, in one go; ``-m slow``: 300,000). The sink: the
generic webhook, pointing at a loopback receiver that holds every request for a second before it
answers. What must hold: the daemon's memory stays bounded while it works through the burst (the file is
read in batches into the store, detection reads the store, alerts wait in the durable outbox: no queue in
memory grows with the burst), every event is processed, nothing is dead-lettered or shed, detection does
not wait for the sink, and the sink's alerts are delivered once it answers. Reported: peak resident
memory over the idle daemon's, the largest detect lag seen, the time to process the burst, and the alerts
still waiting for the slow sink when detection finished.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.alerts.fakes import FakeServer, Rule
from tests.conftest import wait_until
from tests.streams.test_embedded import COMMANDS, Daemon, _metrics
from tests.streams.test_soak import ROOT, _records

SINK_DELAY = 1.0  # seconds the receiver holds each request
BURST_RULE = """\
id: t.burst-alert
title: Burst alert
status: test
severity: medium
kind: azure.activity
match: action == "microsoft.storage/storageaccounts/listkeys/action" and outcome == "success"
actions:
  - alert: [webhook]
tests:
  - name: fires
    events: [{action: microsoft.storage/storageaccounts/listkeys/action, outcome: success}]
    expect: {findings: 1}
"""


def _total(metrics: dict[str, float], name: str) -> float:
    """A metric summed over its labels (the alert metrics are per sink)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _memory_kb(pid: int) -> tuple[int, int]:
    """(resident, peak resident) in KiB, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _burst(work: Path, events: int) -> dict[str, float]:
    shutil.copytree(ROOT / "rules", work / "rules")
    (work / "rules" / "burst.yaml").write_text(BURST_RULE, encoding="utf-8")
    sink = FakeServer().__enter__()
    sink.script(Rule(delay=SINK_DELAY))  # every delivery held, then 200
    (work / "profile.yaml").write_text(
        "data_dir: var\nhttp:\n  port: 0\ndetect:\n  rules: rules\nnodes:\n  local: 0\n"
        f"ingest:\n  poll_interval: 0.2\nalerts:\n  webhook:\n    url: {sink.url('/hook')}\n    secret: a-test-secret\n  group_window: 1\n",
        encoding="utf-8",
    )
    daemon = Daemon([*COMMANDS["cli"], str(work / "profile.yaml")], work)
    try:
        base = daemon.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        with httpx.Client(base_url=base, timeout=30) as client:
            time.sleep(1.0)  # (settled: the idle daemon's memory is the baseline)
            idle_kb, _ = _memory_kb(daemon.proc.pid)
            rnd = random.Random(11)
            body = b"\n".join(_records(rnd, 0, events)) + b"\n"
            inbox = work / "var" / "inbox"
            (inbox / ".burst.jsonl").write_bytes(body)
            os.replace(inbox / ".burst.jsonl", inbox / "burst.jsonl")  # the whole burst at once
            t0 = time.monotonic()
            lag = 0.0
            peak_kb = idle_kb
            metrics: dict[str, float] = {}
            deadline = t0 + 300
            while time.monotonic() < deadline:
                metrics = _metrics(client.get("/metrics").text)
                lag = max(lag, metrics["vigil_detect_lag_events"])
                peak_kb = max(peak_kb, _memory_kb(daemon.proc.pid)[1])
                done = metrics.get("vigil_files_processed_total", 0) >= 1
                if done and metrics["vigil_detect_lag_events"] == 0:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(
                    f"the burst was not processed within 300 s: {metrics}\n{daemon.read_log()[-3000:]}"
                )
            seconds = time.monotonic() - t0
            waiting = _total(metrics, "vigil_alerts_pending")

            def delivered() -> bool:
                got = _metrics(client.get("/metrics").text)
                return (
                    _total(got, "vigil_alerts_pending") == 0
                    and got['vigil_alerts_sent_total{sink="webhook"}'] > 0
                )

            wait_until(delivered, "the slow sink's alerts to be delivered", deadline=120)
            final = _metrics(client.get("/metrics").text)
    finally:
        daemon.stop()
        sink.__exit__()
    return {
        "events": final["vigil_events_total"],
        "seconds": seconds,
        "idle_mb": idle_kb / 1024,
        "peak_growth_mb": (peak_kb - idle_kb) / 1024,
        "max_lag": lag,
        "pending_at_end_of_detection": waiting,
        "sent": final['vigil_alerts_sent_total{sink="webhook"}'],
        "received": float(len(sink.received("/hook"))),
        "shed": _total(final, "vigil_alerts_shed_total"),
        "dead_letters": final["vigil_dead_letters_total"],
        "alerts_dead": _total(final, "vigil_alerts_dead_total"),
        "detected": final["vigil_detect_events_total"],
    }


def _check(result: dict[str, float], events: int, budget_mb: float) -> None:
    print(result)
    assert result["events"] == events and result["detected"] >= events, result
    assert result["dead_letters"] == 0 and result["shed"] == 0 and result["alerts_dead"] == 0, result
    # every alert the webhook sink counts as sent reached the receiver (a retried one may arrive twice)
    assert result["sent"] > 0 and result["received"] >= result["sent"], result
    assert result["peak_growth_mb"] <= budget_mb, result


def test_a_burst_with_a_slow_sink_stays_bounded_and_loses_nothing(tmp_path: Path) -> None:
    _check(_burst(tmp_path, 50_000), 50_000, budget_mb=100)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_large_burst_with_a_slow_sink(tmp_path: Path) -> None:
    # six times the events in the same memory budget: nothing in the daemon grows with the burst's size
    _check(_burst(tmp_path, 300_000), 300_000, budget_mb=100)

"""The crash-point sweep: for every registered point, a process is killed there (SIGKILL) while it ingests
a drop-folder file of 2,000 events and detects over them; a restart must finish the work with every event
in the store's log exactly once, every finding stored exactly once, and the dead letters intact."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from vigil.store.sqlite import Store
from vigil.streams.crash import POINTS

RULES = """\
id: t.burst
title: burst
severity: high
kind: generic
match: action == "read"
threshold: {count: 5, window: 1m, group_by: [actor.ip]}
tests:
  - {name: fires, events: [{action: read}, {action: read}, {action: read}, {action: read}, {action: read}], expect: {findings: 1}}
  - {name: quiet, events: [{action: read}], expect: {findings: 0}}
---
id: t.delete
title: delete
severity: high
kind: generic
match: action == "delete"
tests:
  - {name: fires, events: [{action: delete}], expect: {findings: 1}}
  - {name: quiet, events: [{action: read}], expect: {findings: 0}}
"""

#: one worker run: ingest every file in the drop folder, then detect over the whole log, then stop
WORKER = """
import sys
import time
from pathlib import Path
from vigil.detectors.engine import Detector
from vigil.rules.loader import load_rules
from vigil.settings import load_settings
from vigil.store.sqlite import Store
from vigil.streams.dropfolder import DropFolder
from vigil.streams.pipeline import DetectStage

work = Path(sys.argv[1])
settings = load_settings(work / "profile.yaml", env={})
store = Store(settings.store.path)
stage = DetectStage(store, Detector(load_rules([work / "rules.yaml"]).rules), batch=300, snapshot_every=0.0)
folder = DropFolder(settings, store=store)
folder.prepare()
stage.recover()
for path in sorted(settings.ingest.drop_dir.glob("*.jsonl")):
    folder.process(path)
stage.drain()
stage.step(force_snapshot=True)
"""

N = 2000


def _records() -> bytes:
    lines = []
    for i in range(N):
        action = "delete" if i % 50 == 0 else "read"
        event = {
            "id": f"e{i}",
            "time": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "kind": "generic",
            "action": action,
            "actor": {"ip": f"203.0.113.{i % 7}"},
        }
        lines.append(json.dumps(event))
        if i % 400 == 0:
            lines.append("{not json")
    return ("\n".join(lines) + "\n").encode()


def _run(work: Path, crash_at: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_CRASH_AT"}
    if crash_at:
        env["VIGIL_CRASH_AT"] = crash_at
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(work)], env=env, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()
    return proc.returncode


def _accepted(db: Path) -> list[str]:
    """The ids of the events in the log (not the platform's own), each checked to come back out of its
    stored batch (HTTP batches are kept as the bytes received and normalised again when read)."""
    ids = [
        str(i)
        for (i,) in _table(
            db,
            "SELECT i.id FROM event_ids AS i JOIN event_batches AS b ON i.seq BETWEEN b.first AND b.last "
            "WHERE b.source != 'platform'",
        )
    ]
    store = Store(db)
    try:
        assert set(ids) <= {s.event.id for s in store.read_events(0, limit=1 << 30)}
    finally:
        store.close()
    return ids


def _table(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _setup(root: Path) -> Path:
    root.mkdir()
    (root / "rules.yaml").write_text(RULES)
    (root / "profile.yaml").write_text("data_dir: var\n".replace("var", str(root / "var")))
    inbox = root / "var" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "batch.jsonl").write_bytes(_records())
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[object, ...]]:
    work = _setup(tmp_path_factory.mktemp("ref") / "w")
    assert _run(work, None) == 0
    return _table(work / "var" / "vigil.db", "SELECT id FROM findings ORDER BY id")


PIPELINE_POINTS = [p for p in POINTS if not p.startswith(("http.", "response.", "alerts."))]
HTTP_POINTS = [p for p in POINTS if p.startswith("http.")]
#: swept by tests/response/test_crash.py with a remediation scenario of its own
RESPONSE_POINTS = [p for p in POINTS if p.startswith("response.")]


@pytest.mark.parametrize("point", PIPELINE_POINTS)
def test_crash_point_loses_and_doubles_nothing(point: str, tmp_path: Path, reference: list) -> None:
    work = _setup(tmp_path / "w")
    assert _run(work, f"{point}:1") == -signal.SIGKILL, f"crash point {point} was never reached"
    assert _run(work, None) == 0
    db = work / "var" / "vigil.db"
    ids = _accepted(db)
    assert len(ids) == N and len(set(ids)) == N  # every accepted event once
    assert _table(db, "SELECT count(*) FROM dead_letters") == [(5,)]
    assert _table(db, "SELECT count(*) FROM staged") == [(0,)]
    assert _table(db, "SELECT id FROM findings ORDER BY id") == reference  # every finding once
    assert len(reference) > N // 50  # deletes and bursts both fired
    assert (work / "var" / "inbox" / "processed" / "batch.jsonl").exists()
    assert not (work / "var" / "inbox" / "batch.jsonl").exists()


class _Daemon:
    """``vigil run`` on a free port, its log in a file; optionally with ``VIGIL_CRASH_AT``."""

    def __init__(self, work: Path, crash_at: str | None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
        if crash_at:
            env["VIGIL_CRASH_AT"] = crash_at
        self.log = work / f"daemon-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vigil.cli", "run", "--config", str(work / "profile.yaml")],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", self.log.read_text(errors="replace"))
            if found:
                self.base = found.group(1)
                return
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        pytest.fail("the daemon did not start")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.mark.parametrize("point", HTTP_POINTS)
def test_http_crash_point_with_a_retrying_client(point: str, tmp_path: Path, reference: list) -> None:
    """The client posts 100-line batches and retries a batch whose answer it did not get (the daemon was
    killed at the crash point on the third batch, then restarted): every event once, every finding once."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "rules.yaml").write_text(RULES)
    (work / "profile.yaml").write_text("data_dir: var\nhttp: {port: 0}\ndetect: {rules: rules.yaml}\n")
    lines = _records().splitlines(keepends=True)
    batches = [b"".join(lines[i : i + 100]) for i in range(0, len(lines), 100)]
    daemon = _Daemon(work, f"{point}:3")
    crashed = False
    try:
        for body in batches:
            while True:
                token = (work / "var" / "ingest.token").read_text().strip()
                try:
                    r = httpx.post(
                        f"{daemon.base}/v1/events", content=body, headers={"Authorization": f"Bearer {token}"}
                    )
                    assert r.status_code == 200, r.text
                    break
                except httpx.TransportError:  # killed at the crash point: restart it, retry the batch
                    assert daemon.proc.wait(10) == -signal.SIGKILL
                    crashed = True
                    daemon = _Daemon(work, None)
        assert crashed, f"crash point {point} was never reached"
        end = time.monotonic() + 30
        while (
            time.monotonic() < end and _detected_beyond_platform(httpx.get(f"{daemon.base}/metrics").text) < N
        ):
            time.sleep(0.1)
    finally:
        assert daemon.stop() == 0
    db = work / "var" / "vigil.db"
    ids = _accepted(db)
    assert len(ids) == N and len(set(ids)) == N  # every accepted event once, the retried batch included
    assert _table(db, "SELECT id FROM findings ORDER BY id") == reference  # every finding once
    # a retried batch's dead letters are recognised (same source, position and content): each stored once
    assert _table(db, "SELECT count(*) FROM dead_letters") == [(5,)]


def test_the_sweep_covers_every_registered_point() -> None:
    print("crash points:", ", ".join(POINTS))
    assert len(POINTS) == len(set(POINTS)) >= 7
    alerts = {p for p in POINTS if p.startswith("alerts.")}  # swept by tests/alerts/test_kill.py
    assert set(PIPELINE_POINTS) | set(HTTP_POINTS) | set(RESPONSE_POINTS) | alerts == set(POINTS)


def _detected_beyond_platform(metrics: str) -> int:
    """Events detected that are not the platform's own (its first start creates the audit log's keys)."""
    values = {}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name in ("vigil_detect_events_total", "vigil_platform_events_total"):
            values[name] = int(float(value))
    return values.get("vigil_detect_events_total", 0) - values.get("vigil_platform_events_total", 0)

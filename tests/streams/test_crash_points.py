"""The crash-point sweep: for every registered point, a process is killed there (SIGKILL) while it ingests
a drop-folder file of 2,000 events and detects over them; a restart must finish the work with every event
in the store's log exactly once, every finding stored exactly once, and the dead letters intact."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("point", POINTS)
def test_crash_point_loses_and_doubles_nothing(point: str, tmp_path: Path, reference: list) -> None:
    work = _setup(tmp_path / "w")
    assert _run(work, f"{point}:1") == -signal.SIGKILL, f"crash point {point} was never reached"
    assert _run(work, None) == 0
    db = work / "var" / "vigil.db"
    ids = _table(db, "SELECT id FROM events")
    assert len(ids) == N and len(set(ids)) == N  # every accepted event once
    assert _table(db, "SELECT count(*) FROM dead_letters") == [(5,)]
    assert _table(db, "SELECT count(*) FROM staged") == [(0,)]
    assert _table(db, "SELECT id FROM findings ORDER BY id") == reference  # every finding once
    assert len(reference) > N // 50  # deletes and bursts both fired
    assert (work / "var" / "inbox" / "processed" / "batch.jsonl").exists()
    assert not (work / "var" / "inbox" / "batch.jsonl").exists()


def test_the_sweep_covers_every_registered_point() -> None:
    print("crash points:", ", ".join(POINTS))
    assert len(POINTS) == len(set(POINTS)) >= 5

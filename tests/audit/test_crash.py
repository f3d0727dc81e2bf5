"""Crash safety (reliability.md G4): SIGKILL a process in the middle of appending, again and again.

The child appends in a loop (single records and batches of four, a checkpoint every seven records to a
file sink) until it is killed at a random moment. After every kill the log must verify against every
exported checkpoint, SQLite must report no corruption, no batch may be partly present, and the log
never shrinks. The default suite runs 10 kills; ``-m slow`` runs the 100 of the acceptance criterion.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.audit.conftest import keys_of, open_vault
from vigil.audit.checkpoint import load_checkpoints
from vigil.audit.verify import verify

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, sys
from pathlib import Path
from tests.audit.conftest import open_vault
from vigil.audit.checkpoint import FileSink
from vigil.audit.log import AuditLog
from vigil.audit.record import Actor, AuditEntry, AuditKind

root = Path(sys.argv[1])

async def main() -> None:
    vault = open_vault(root / "platform")
    log = AuditLog(root / "audit.db", vault, checkpoint_every=7, sinks=[FileSink(root / "cp.jsonl")])
    await log.open()
    head = log.head()[0]
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        tag = f"{head}-{i}"
        if i % 3 == 0:
            await log.append_many(
                [AuditEntry(Actor.rule("r"), AuditKind.FINDING, "batch", {"batch": tag, "j": j}) for j in range(4)]
            )
        else:
            await log.append(Actor.system(), AuditKind.ACTION_INTENT, "single", {"i": tag, "pad": "x" * (i % 700)})

asyncio.run(main())
"""


def _crash_loop(tmp_path: Path, iterations: int, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "audit.db"
    previous = 0
    for iteration in range(iterations):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == b"ready\n", (line, child.stderr.read() if child.stderr else b"")
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else b""
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()

        vault = open_vault(tmp_path / "platform")
        try:
            keys = keys_of(vault)
        finally:
            vault.close()
        exported = load_checkpoints(tmp_path / "cp.jsonl") if (tmp_path / "cp.jsonl").exists() else []
        report = verify(path, keys, exported)
        assert report.ok, f"iteration {iteration}: {report.summary()}"
        assert report.head_seq >= previous, "the log lost committed records"
        previous = report.head_seq

        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            batches = Counter(
                row[0]
                for row in db.execute(
                    "SELECT json_extract(details, '$.batch') FROM records WHERE subject = 'batch'"
                )
            )
        finally:
            db.close()
        torn = {tag: n for tag, n in batches.items() if n != 4}
        assert not torn, f"iteration {iteration}: batches partly written: {torn}"
    assert previous > 0


def test_kill_during_append_10_times(tmp_path: Path) -> None:
    _crash_loop(tmp_path, 10, seed=10)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_during_append_100_times(tmp_path: Path) -> None:
    _crash_loop(tmp_path, 100, seed=100)

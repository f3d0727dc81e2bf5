"""The response crash sweep (issue 8, reliability C1, C2, C14): a process running one remediation is killed
(SIGKILL) at every ``response.*`` crash point, then restarted; the restart must finish the action, make each
platform mutation exactly once, and leave an audit chain that verifies.

The evidence is file-backed: the worker (:mod:`tests.response.crash_worker`) wires the audit log as the
platform's observer, so every platform change is an audit record written before the change is durable.
Counting those records with outcome ``success`` counts the mutations, across both processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vigil.audit.db import AuditDB
from vigil.audit.record import AuditKind, AuditRecord
from vigil.audit.verify import public_keys, verify
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.response.model import ActionState
from vigil.response.store import ActionStore
from vigil.streams.crash import POINTS

ROOT = Path(__file__).resolve().parents[2]
RESPONSE_POINTS = [p for p in POINTS if p.startswith("response.")]
#: (event kind, a details predicate) of each mutation a remediation makes, which must happen once
MUTATIONS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "lock_storage": [
        ("platform.storage.set_public_read", {"public_read": False}),
        ("platform.storage.set_lock", {"lock": "read_only"}),
    ],
    "quarantine_vm": [("platform.node.quarantine", {})],
}
#: every point once (the per-step points then hit inside step 0) ...
SWEEP = [f"{p}:1" for p in RESPONSE_POINTS]
#: ... and inside step 1 of 2 (reliability C14: resume finishes the remaining step)
SECOND_STEP = ["response.after_intent:2", "response.after_apply:2"]


def _run(work: Path, remediation: str, crash_at: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    if crash_at:
        env["VIGIL_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "tests.response.crash_worker", str(work), remediation],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _records(work: Path) -> list[AuditRecord]:
    db = AuditDB(work / "audit.db", readonly=True)
    try:
        return db.query(limit=1_000_000)
    finally:
        db.close()


def _mutations(records: list[AuditRecord], kind: str, match: dict[str, Any]) -> list[int]:
    """Seqs of the successful platform changes of ``kind`` whose details include ``match``."""
    return [
        r.seq
        for r in records
        if r.kind is AuditKind.PLATFORM_CHANGE
        and r.details["event"] == kind
        and r.details["outcome"] == "success"
        and match.items() <= r.details["details"].items()
    ]


def _sweep(tmp_path: Path, remediation: str, point: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    crashed = _run(work, remediation, point)
    assert crashed.returncode == -signal.SIGKILL, f"{point} never reached: {crashed.stderr}"
    done = _run(work, remediation, None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "succeeded"

    records = _records(work)
    for kind, match in MUTATIONS[remediation]:
        seqs = _mutations(records, kind, match)
        assert len(seqs) == 1, f"{kind} happened {len(seqs)} times after a crash at {point}"
        # its intent is on record before its effect: the last action record before it is an intent
        before = [
            r
            for r in records
            if r.seq < seqs[0] and r.kind in (AuditKind.ACTION_INTENT, AuditKind.ACTION_RESULT)
        ]
        assert before and before[-1].kind is AuditKind.ACTION_INTENT
    results = [r.details for r in records if r.kind is AuditKind.ACTION_RESULT and "outcome" in r.details]
    assert [d["outcome"] for d in results][-1] == "succeeded"

    store = ActionStore(work / "vigil.db")
    action = store.get("act-1")
    store.close()
    assert action is not None and action.state is ActionState.SUCCEEDED and action.plan is not None

    vault = LocalKeyVault(
        work / "platform" / "vault.db", MasterKey.from_file(work / "platform" / "master.key")
    )
    try:
        report = verify(work / "audit.db", asyncio.run(public_keys(vault)))
    finally:
        vault.close()
    assert report.ok, report.summary()


@pytest.mark.parametrize("point", SWEEP)
def test_lock_storage_crash_point_mutates_once(point: str, tmp_path: Path) -> None:
    _sweep(tmp_path, "lock_storage", point)


def test_quarantine_vm_crash_in_the_ambiguous_window_mutates_once(tmp_path: Path) -> None:
    """Killed after the quarantine call returned, before its progress was stored (reliability C2)."""
    _sweep(tmp_path, "quarantine_vm", "response.after_apply:2")


@pytest.mark.slow
@pytest.mark.parametrize("point", SECOND_STEP)
def test_lock_storage_crash_inside_the_second_step_mutates_once(point: str, tmp_path: Path) -> None:
    _sweep(tmp_path, "lock_storage", point)


@pytest.mark.slow
@pytest.mark.parametrize("point", SWEEP + SECOND_STEP)
def test_quarantine_vm_crash_point_mutates_once(point: str, tmp_path: Path) -> None:
    _sweep(tmp_path, "quarantine_vm", point)


def test_the_sweep_covers_every_response_point() -> None:
    assert len(RESPONSE_POINTS) == 5
    assert {p.partition(":")[0] for p in SWEEP} == set(RESPONSE_POINTS)

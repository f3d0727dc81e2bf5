"""The audit log: chained appends, batching, HMACed secrets, fail closed on a full disk, status."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from tests.audit.conftest import filled_log, keys_of, run
from vigil.audit.log import HMAC_KEY, SIGNING_KEY, AuditLog, AuditUnavailableError, hmac_of
from vigil.audit.record import Actor, AuditEntry, AuditKind
from vigil.audit.verify import verify
from vigil.platform.local.keyvault import LocalKeyVault

ACTOR = Actor.rule("azure.vm.isolate")


def test_appends_chain_and_survive_reopen(tmp_path: Path, vault: LocalKeyVault) -> None:
    path = tmp_path / "audit.db"

    async def main() -> None:
        log = AuditLog(path, vault)
        await log.open()
        first = await log.append(ACTOR, AuditKind.FINDING, "vm/a", {"score": 0.9})
        second = await log.append(Actor.user("alice"), AuditKind.APPROVAL, "vm/a")
        assert (first.seq, second.seq) == (1, 2)
        assert second.prev_hash == first.hash
        assert log.head() == (2, second.hash)
        await log.close()
        again = AuditLog(path, vault)
        await again.open()
        third = await again.append(ACTOR, AuditKind.ACTION_INTENT, "vm/a", {"plan": ["stop"]})
        assert third.seq == 3 and third.prev_hash == second.hash
        await again.close()

    run(main())
    report = verify(path, keys_of(vault))
    assert report.ok and report.records == 3


def test_keys_are_created_once_in_the_vault(tmp_path: Path, vault: LocalKeyVault) -> None:
    run(filled_log(AuditLog(tmp_path / "a.db", vault), 1))
    run(filled_log(AuditLog(tmp_path / "b.db", vault), 1))
    signing = run(vault.get_key("vigil", SIGNING_KEY))
    assert signing.kind == "ed25519" and len(signing.versions) == 1
    assert signing.versions[0].public_key is not None and len(signing.versions[0].public_key) == 32
    assert run(vault.get_key("vigil", HMAC_KEY)).kind == "aes256"


def test_append_many_is_one_transaction(tmp_path: Path, vault: LocalKeyVault) -> None:
    path = tmp_path / "audit.db"

    async def main() -> None:
        log = AuditLog(path, vault)
        await log.open()
        assert await log.append_many([]) == []
        entries = [AuditEntry(ACTOR, AuditKind.FINDING, f"vm/{i}", {"i": i}) for i in range(5)]
        records = await log.append_many(entries)
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]
        # one bad entry (a secret in details) refuses the whole batch before anything is written
        bad = [*entries, AuditEntry(ACTOR, AuditKind.FINDING, "vm/x", {"password": "canary-pw"})]
        with pytest.raises(ValueError, match="names a secret"):
            await log.append_many(bad)
        assert log.head()[0] == 5
        assert log.status().failures == 0  # a caller's mistake is not an outage
        await log.close()

    run(main())


def test_secrets_are_stored_only_as_hmac(tmp_path: Path, vault: LocalKeyVault) -> None:
    path = tmp_path / "audit.db"
    canary = "canary-sas-sv2024-sig-0123456789abcdef"

    async def main() -> str:
        log = AuditLog(path, vault)
        await log.open()
        rec = await log.append(
            Actor.system(),
            AuditKind.CONFIG_CHANGE,
            "webhook/teams",
            {"field": "url"},
            secrets={"webhook_secret": canary},
        )
        with pytest.raises(ValueError, match="also a key of details"):
            await log.append(Actor.system(), AuditKind.LOGIN, "x", {"a": 1}, secrets={"a": canary})
        await log.close()
        expected = await hmac_of(vault, "vigil", canary)
        assert rec.details["webhook_secret"] == expected
        return expected

    expected = run(main())
    assert expected.startswith("hmac-sha256:") and len(expected) == len("hmac-sha256:") + 64
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert canary.encode() not in file.read_bytes(), file
    assert expected.encode() in path.read_bytes()


def test_synchronous_pragma_is_applied_and_asserted(tmp_path: Path, vault: LocalKeyVault) -> None:
    async def main() -> tuple[int, int]:
        full = AuditLog(tmp_path / "full.db", vault)
        normal = AuditLog(tmp_path / "normal.db", vault, synchronous="NORMAL")
        await full.open()
        await normal.open()
        levels = (
            full.db.connection.execute("PRAGMA synchronous").fetchone()[0],
            normal.db.connection.execute("PRAGMA synchronous").fetchone()[0],
        )
        assert full.db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        await full.close()
        await normal.close()
        return levels

    assert run(main()) == (2, 1)


def test_records_are_append_only_through_sql(tmp_path: Path, vault: LocalKeyVault) -> None:
    path = tmp_path / "audit.db"
    run(filled_log(AuditLog(path, vault), 3))
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE records SET subject = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM records")
    db.close()


def test_disk_full_fails_closed_and_recovers(
    tmp_path: Path, vault: LocalKeyVault, caplog: pytest.LogCaptureFixture
) -> None:
    """G1: the action guarded by the audit append does not run; status says why; appends resume."""
    path = tmp_path / "audit.db"
    actions: list[str] = []

    async def guarded_action(log: AuditLog, target: str) -> None:
        await log.append(ACTOR, AuditKind.ACTION_INTENT, target, {"action": "isolate"})
        actions.append(target)  # do_action(): runs only once the intent is durable

    async def main() -> None:
        log = AuditLog(path, vault, checkpoint_every=10_000)
        await log.open()
        await guarded_action(log, "vm/before")
        conn = log.db.connection
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(AuditUnavailableError, match="audit disk full") as err:
            for i in range(10_000):  # fill the last pages, then one more append cannot fit
                await guarded_action(log, f"vm/{i}")
        refused = err.value
        head_at_failure = log.head()
        done_before = len(actions)
        # every further attempt is refused too, and its action does not run
        with pytest.raises(AuditUnavailableError):
            await guarded_action(log, "vm/refused")
        assert len(actions) == done_before and "vm/refused" not in actions
        assert log.head() == head_at_failure  # nothing torn, nothing half written
        status = log.status()
        assert not status.ok and status.reason is not None and status.reason.startswith("audit disk full")
        assert status.failures == 2 and str(refused).startswith("audit disk full")
        # space is freed: the next append succeeds, the log is ready again, the chain continues
        conn.execute(f"PRAGMA max_page_count = {pages * 100}")
        await guarded_action(log, "vm/after")
        assert actions[-1] == "vm/after"
        assert log.status().ok and log.status().reason is None
        assert log.head()[0] == head_at_failure[0] + 1
        await log.close()

    with caplog.at_level(logging.WARNING, logger="vigil.audit.log"):
        run(main())
    assert any("audit disk full" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    report = verify(path, keys_of(vault))
    assert report.ok, report.summary()
    assert report.records == len(actions)  # every action that ran has its intent in the log, and no more


def test_closed_log_refuses(tmp_path: Path, vault: LocalKeyVault) -> None:
    log = AuditLog(tmp_path / "audit.db", vault)
    with pytest.raises(AuditUnavailableError, match="not open"):
        run(log.append(ACTOR, AuditKind.FINDING, "x"))
    assert log.status().reason == "audit log is not open"


def test_unopenable_database_fails_closed(tmp_path: Path, vault: LocalKeyVault) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(AuditUnavailableError, match="cannot open the audit log"):
        run(AuditLog(path, vault).open())


def test_wall_clock_stepping_back_keeps_seq_and_verifies(
    tmp_path: Path, vault: LocalKeyVault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """G7: the wall clock steps back 10 minutes between two records."""
    path = tmp_path / "audit.db"
    real = time.time_ns
    offset = [0]
    monkeypatch.setattr(time, "time_ns", lambda: real() + offset[0])

    async def main() -> tuple[int, int, int, int]:
        log = AuditLog(path, vault)
        await log.open()
        a = await log.append(ACTOR, AuditKind.FINDING, "x")
        offset[0] = -600 * 10**9
        b = await log.append(ACTOR, AuditKind.FINDING, "x")
        await log.close()
        return a.seq, b.seq, b.time_us - a.time_us, b.mono_us - a.mono_us

    seq_a, seq_b, wall_delta, mono_delta = run(main())
    assert seq_b == seq_a + 1
    assert wall_delta < -590 * 10**6 and mono_delta >= 0  # recorded as observed; the monotonic delta tells
    assert verify(path, keys_of(vault)).ok


def test_status_counts(tmp_path: Path, vault: LocalKeyVault) -> None:
    async def main() -> None:
        log = AuditLog(tmp_path / "audit.db", vault, checkpoint_every=3)
        await log.open()
        for i in range(7):
            await log.append(ACTOR, AuditKind.FINDING, f"vm/{i}")
        status = log.status()
        assert status.ok and status.appends == 7 and status.head_seq == 7
        assert status.checkpoints == 2 and status.unsigned == 1
        assert any("no checkpoint sink configured" in a for a in status.alarms)
        await log.close()

    run(main())

"""Signed checkpoints, their sinks (one down: alarm; all down: fail closed), signing outages, the observer."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import pytest

from tests.audit.conftest import keys_of, run
from vigil.audit.checkpoint import (
    CHECKPOINT_PREFIX,
    AuditObserver,
    Checkpoint,
    FileSink,
    load_checkpoints,
)
from vigil.audit.log import SIGNING_KEY, AuditLog, AuditUnavailableError
from vigil.audit.record import Actor, AuditKind
from vigil.audit.verify import verify
from vigil.platform.events import PlatformEvent
from vigil.platform.local.keyvault import LocalKeyVault

ACTOR = Actor.system()


def _blocked_sink(tmp_path: Path, name: str) -> tuple[FileSink, Path]:
    """A file sink that cannot write while a regular file sits where its folder should be."""
    blocker = tmp_path / name
    blocker.write_text("not a folder")
    return FileSink(blocker / "checkpoints.jsonl"), blocker


def _unblock(blocker: Path) -> None:
    blocker.unlink()


def test_checkpoints_every_n_records_are_signed_and_exported(tmp_path: Path, vault: LocalKeyVault) -> None:
    sink_path = tmp_path / "sink" / "checkpoints.jsonl"

    async def main() -> list[Checkpoint]:
        log = AuditLog(tmp_path / "audit.db", vault, checkpoint_every=5, sinks=[FileSink(sink_path)])
        await log.open()
        for i in range(12):
            await log.append(ACTOR, AuditKind.FINDING, f"vm/{i}")
        stored = log.db.checkpoints()
        await log.close()  # a final checkpoint covers the tail
        return stored

    stored = run(main())
    exported = load_checkpoints(sink_path)
    assert [cp.seq for cp in stored] == [5, 10]
    assert [cp.seq for cp in exported] == [5, 10, 12]
    keys = keys_of(vault)
    for cp in exported:
        assert cp.key_name == SIGNING_KEY
        assert cp.verify_signature(keys[(cp.key_name, cp.key_version)])
        assert cp.message().startswith(CHECKPOINT_PREFIX)
    assert verify(tmp_path / "audit.db", keys, exported).ok


def test_checkpoint_after_interval_and_from_timer(tmp_path: Path, vault: LocalKeyVault) -> None:
    sink = FileSink(tmp_path / "cp.jsonl")

    async def main() -> None:
        log = AuditLog(tmp_path / "audit.db", vault, checkpoint_seconds=0.05, sinks=[sink])
        await log.open()
        await log.append(ACTOR, AuditKind.FINDING, "a")
        assert await log.checkpoint_if_due() is None  # not due yet
        await asyncio.sleep(0.06)
        cp = await log.checkpoint_if_due()
        assert cp is not None and cp.seq == 1
        await asyncio.sleep(0.06)
        assert await log.checkpoint_if_due() is None  # nothing new to cover
        await log.append(ACTOR, AuditKind.FINDING, "b")
        await asyncio.sleep(0.06)
        await log.append(ACTOR, AuditKind.FINDING, "c")  # due: checkpoint of seq 2 before it
        assert [c.seq for c in log.db.checkpoints()] == [1, 2]
        await log.close()

    run(main())
    assert [cp.seq for cp in load_checkpoints(sink.path)] == [1, 2, 3]


def test_one_sink_down_is_an_alarm_both_down_fail_closed(
    tmp_path: Path, vault: LocalKeyVault, caplog: pytest.LogCaptureFixture
) -> None:
    """G2: with two sinks, one down: appends continue with an alarm; both down: fail closed."""
    good = FileSink(tmp_path / "good" / "cp.jsonl")
    bad, blocker = _blocked_sink(tmp_path, "bad")
    path = tmp_path / "audit.db"

    async def main() -> None:
        log = AuditLog(path, vault, checkpoint_every=2, sinks=[good, bad])
        await log.open()
        for i in range(6):  # checkpoints of seq 2 and 4, due before appends 3 and 5
            await log.append(ACTOR, AuditKind.FINDING, f"vm/{i}")
        status = log.status()
        assert status.ok and status.head_seq == 6
        assert status.sink_failures == {good.name: 0, bad.name: 2}
        assert any(bad.name in alarm for alarm in status.alarms)

        good.path.parent.rename(tmp_path / "good-gone")
        good.path.parent.write_text("blocked too")
        head = log.head()
        with pytest.raises(AuditUnavailableError, match="no checkpoint sink reachable"):
            await log.append(ACTOR, AuditKind.ACTION_INTENT, "vm/x", {"action": "stop"})
        assert log.head() == head  # the refused record was not written
        status = log.status()
        assert not status.ok and status.reason is not None
        assert status.reason.startswith("no checkpoint sink reachable")
        with pytest.raises(AuditUnavailableError):
            await log.checkpoint_if_due()

        _unblock(blocker)  # one sink back: the pending checkpoint goes out, appends resume
        rec = await log.append(ACTOR, AuditKind.ACTION_INTENT, "vm/x", {"action": "stop"})
        assert rec.seq == head[0] + 1
        status = log.status()
        assert status.ok and not any(bad.name in a for a in status.alarms)
        assert any(good.name in a for a in status.alarms)
        await log.close()

    with caplog.at_level(logging.WARNING, logger="vigil.audit.log"):
        run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(bad.name in w for w in warnings)
    exported = load_checkpoints(bad.path)
    assert exported and exported[0].seq == 6  # the checkpoint held back while every sink was down
    assert verify(path, keys_of(vault), load_checkpoints(tmp_path / "good-gone" / "cp.jsonl") + exported).ok


class _HangingSink:
    """A sink that never answers (a remote store behind a dead network path)."""

    name = "hanging"

    async def write(self, checkpoint: Checkpoint) -> None:
        await asyncio.sleep(3600)


def test_a_hanging_sink_counts_as_down(tmp_path: Path, vault: LocalKeyVault) -> None:
    async def main() -> None:
        log = AuditLog(
            tmp_path / "audit.db", vault, checkpoint_every=1, sinks=[_HangingSink()], sink_timeout=0.05
        )
        await log.open()
        await log.append(ACTOR, AuditKind.FINDING, "a")
        with pytest.raises(AuditUnavailableError, match="hanging: timed out"):
            await log.append(ACTOR, AuditKind.FINDING, "b")
        await log.close()  # its final checkpoint times out too: closing does not hang

    run(main())


def test_signing_outage_keeps_the_chain_growing(tmp_path: Path, vault: LocalKeyVault) -> None:
    """G6: no signing key: appends continue, checkpoints are pending (alarm), signed later; never unsigned."""
    sink = FileSink(tmp_path / "cp.jsonl")
    path = tmp_path / "audit.db"

    async def main() -> None:
        log = AuditLog(path, vault, checkpoint_every=2, sinks=[sink])
        await log.open()
        info = await vault.get_key("vigil", SIGNING_KEY)
        assert info.current is not None
        await vault.set_version_enabled("vigil", SIGNING_KEY, info.current, False)
        for i in range(6):
            await log.append(ACTOR, AuditKind.FINDING, f"vm/{i}")
        status = log.status()
        assert status.ok and status.unsigned == 6 and status.sign_failures >= 1
        assert any("checkpoint signing failed" in a for a in status.alarms)
        assert log.db.checkpoints() == []

        await vault.rotate_key("vigil", SIGNING_KEY)  # a new version: signing works again
        await asyncio.sleep(1.05)  # past the retry pause
        cp = await log.checkpoint_if_due()
        assert cp is not None and cp.seq == 6 and cp.key_version != info.current
        assert log.status().unsigned == 0 and not any("signing" in a for a in log.status().alarms)
        await log.close()

    run(main())
    assert verify(path, keys_of(vault), load_checkpoints(sink.path)).ok


def test_file_sink_line_format_and_torn_tail(tmp_path: Path) -> None:
    cp = Checkpoint(3, "ab" * 16, b"\x01" * 32, 1_767_225_600_000_000, SIGNING_KEY, "v1", b"\x02" * 64)
    sink = FileSink(tmp_path / "deep" / "er" / "cp.jsonl")
    run(sink.write(cp))
    run(sink.write(cp))
    lines = sink.path.read_bytes().splitlines()
    assert len(lines) == 2 and orjson.loads(lines[0])["head"] == "01" * 32
    assert Checkpoint.from_json(orjson.loads(lines[0])) == cp
    with sink.path.open("ab") as fh:
        fh.write(lines[0][:30])  # a write cut short by a crash
    assert load_checkpoints(sink.path) == [cp, cp]
    sink.path.write_bytes(lines[0] + b"\n{broken\n" + lines[1] + b"\n")
    with pytest.raises(ValueError, match=r"cp\.jsonl:2:"):
        load_checkpoints(sink.path)


def test_checkpoint_signature_covers_every_field(tmp_path: Path, vault: LocalKeyVault) -> None:
    sink = FileSink(tmp_path / "cp.jsonl")

    async def main() -> None:
        log = AuditLog(tmp_path / "audit.db", vault, sinks=[sink])
        await log.open()
        await log.append(ACTOR, AuditKind.FINDING, "a")
        await log.close()

    run(main())
    (cp,) = load_checkpoints(sink.path)
    key = keys_of(vault)[(cp.key_name, cp.key_version)]
    assert cp.verify_signature(key)
    for field, value in (("seq", 2), ("head", b"\x00" * 32), ("origin", "other"), ("time_us", 1)):
        forged = Checkpoint(**{**{f: getattr(cp, f) for f in cp.__slots__}, field: value})
        assert not forged.verify_signature(key), field


def test_observer_records_platform_events_and_fails_closed(tmp_path: Path, vault: LocalKeyVault) -> None:
    async def main() -> None:
        log = AuditLog(tmp_path / "audit.db", vault)
        await log.open()
        observer = AuditObserver(log)
        await observer.record(
            PlatformEvent("platform.key.release", "node-1", "dataset-key", {"version": "v"})
        )
        await observer.record(PlatformEvent("platform.key.rotate", "vigil", "dataset-key"))
        rows = log.db.query()
        assert [(r.kind, r.actor, r.subject) for r in rows] == [
            (AuditKind.KEY_RELEASE, Actor.user("node-1"), "dataset-key"),
            (AuditKind.PLATFORM_CHANGE, Actor.system("vigil"), "dataset-key"),
        ]
        assert rows[0].details["event"] == "platform.key.release"
        assert rows[0].details["details"] == {"version": "v"}
        await log.close()
        with pytest.raises(AuditUnavailableError):
            await observer.record(PlatformEvent("platform.key.release", "node-1", "dataset-key"))

    run(main())


def test_vault_changes_abort_when_the_audit_log_is_full(tmp_path: Path) -> None:
    """The real vault, observed by the audit log: a key is not created when its record cannot be written."""
    from vigil.platform.local.masterkey import MasterKey

    async def main() -> None:
        holder: list[AuditLog] = []

        class _Late:  # the vault needs an observer before the log (which needs the vault) exists
            async def record(self, event: PlatformEvent) -> None:
                await AuditObserver(holder[0]).record(event)

        vault = LocalKeyVault(tmp_path / "vault.db", MasterKey.generate(), observer=_Late())
        log = AuditLog(tmp_path / "audit.db", vault, checkpoint_every=10_000)
        holder.append(log)
        await log.open()  # its own key creation is audited through itself
        kinds = [r.details["event"] for r in log.db.query()]
        assert kinds.count("platform.key.create") == 2
        conn = log.db.connection
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        created = 0
        with pytest.raises(AuditUnavailableError):
            for i in range(10_000):
                await vault.create_key("vigil", f"k{i}")
                created += 1
        names = {k.name for k in await vault.list_keys("vigil")}
        assert f"k{created}" not in names  # the refused change did not happen
        await log.close()
        vault.close()

    run(main())

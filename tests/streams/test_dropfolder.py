"""The drop folder, against real files: what lands where, the counters, and exactly-once across crashes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from vigil.settings import Settings, load_settings
from vigil.streams import IngestStats
from vigil.streams.dropfolder import JOURNAL, DropFolder, OutputError

GOOD = {
    "time": "2024-05-01T10:00:00Z",
    "resourceId": "/SUBSCRIPTIONS/S1/RESOURCEGROUPS/G1/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV1",
    "operationName": "MICROSOFT.KEYVAULT/VAULTS/WRITE",
    "category": "Administrative",
    "resultType": "Success",
    "correlationId": "c-1",
}


def good(n: int) -> str:
    return json.dumps({**GOOD, "correlationId": f"c-{n}"})


#: two events and two records that cannot be normalised (a bare number, broken JSON)
MIXED = f"{good(1)}\n42\n{{not json\n{good(2)}\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\ningest:\n  poll_interval: 0.05\n", encoding="utf-8")
    return load_settings(profile, env={})


@pytest.fixture
def folder(settings: Settings) -> DropFolder:
    drop = DropFolder(settings)
    drop.prepare()
    return drop


def drop_file(folder: DropFolder, name: str, text: str) -> Path:
    """Write the way the contract asks: under a dot-name, then rename."""
    tmp = folder.drop_dir / f".{name}"
    tmp.write_text(text, encoding="utf-8")
    return tmp.rename(folder.drop_dir / name)


def lines(path: Path) -> list[dict[str, object]]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    )


def test_good_and_bad_records_land_in_their_files(folder: DropFolder) -> None:
    src = drop_file(folder, "batch.jsonl", MIXED)
    assert folder.scan() == []  # first sighting: not yet known to be stable
    assert folder.scan() == [src]
    outcome = folder.process(src)
    assert outcome is not None
    assert (outcome.status, outcome.events, outcome.dead_letters) == ("processed", 2, 2)
    events = lines(folder.events_file)
    assert [e["kind"] for e in events] == ["azure.activity", "azure.activity"]
    assert events[0]["resource"] == {
        "id": "/subscriptions/s1/resourcegroups/g1/providers/microsoft.keyvault/vaults/kv1",
        "type": "microsoft.keyvault/vaults",
        "name": "kv1",
        "subscription": "s1",
        "group": "g1",
    }
    dead = lines(folder.dead_letter_file)
    assert [(d["line"], d["source"]) for d in dead] == [(2, str(outcome.dest)), (3, str(outcome.dest))]
    assert "expected a JSON object" in str(dead[0]["reason"])
    assert dead[1]["text"] == "{not json"
    assert outcome.dest == folder.processed_dir / "batch.jsonl"
    assert outcome.dest.read_text(encoding="utf-8") == MIXED
    assert not src.exists()
    assert not folder.journal.exists()


def test_only_finished_input_files_are_taken(folder: DropFolder) -> None:
    names = ["a.json", "b.ndjson", "C.JSONL", ".hidden.jsonl", "d.jsonl.tmp", "e.txt", "f.json.swp"]
    for name in names:
        (folder.drop_dir / name).write_text(good(1), encoding="utf-8")
    (folder.drop_dir / "sub.json").mkdir()
    os.symlink(folder.drop_dir / "a.json", folder.drop_dir / "link.json")
    folder.scan()
    assert sorted(p.name for p in folder.scan()) == ["C.JSONL", "a.json", "b.ndjson"]


def test_a_growing_file_waits(folder: DropFolder) -> None:
    src = folder.drop_dir / "slow.jsonl"
    src.write_text(good(1) + "\n", encoding="utf-8")
    folder.scan()
    with src.open("a", encoding="utf-8") as fh:
        fh.write(good(2) + "\n")
    assert folder.scan() == []
    assert folder.scan() == [src]


def test_a_reused_name_does_not_overwrite(folder: DropFolder) -> None:
    for n in range(2):
        src = drop_file(folder, "same.json", good(n))
        outcome = folder.process(src)
        assert outcome is not None
    assert sorted(p.name for p in folder.processed_dir.iterdir()) == ["same.1.json", "same.json"]
    assert len(lines(folder.events_file)) == 2


def test_unreadable_input_goes_to_failed(folder: DropFolder) -> None:
    before = folder.events_file.stat().st_size if folder.events_file.exists() else 0
    bad = folder.drop_dir / "dir.json"
    bad.mkdir()  # opening it fails, as an unreadable file would
    outcome = folder.process(bad)
    assert outcome is not None and outcome.status == "failed"
    assert outcome.dest == folder.failed_dir / "dir.json"
    assert outcome.dest.exists() and not bad.exists()
    assert "cannot open" in (folder.failed_dir / "dir.json.error").read_text(encoding="utf-8")
    assert (folder.events_file.stat().st_size if folder.events_file.exists() else 0) == before
    assert not folder.journal.exists()


def test_output_failure_keeps_the_input_and_rolls_back(settings: Settings, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    broken = settings.model_copy(
        update={"output": settings.output.model_copy(update={"events_file": blocked})}
    )
    folder = DropFolder(broken)
    folder.prepare()
    src = drop_file(folder, "keep.jsonl", MIXED)
    with pytest.raises(OutputError, match="cannot write output"):
        folder.process(src)
    assert src.exists()
    assert lines(folder.dead_letter_file) == []  # the dead letters of the failed attempt were rolled back
    assert not folder.journal.exists()


def test_restart_after_a_crash_mid_file_redoes_it_exactly_once(
    folder: DropFolder, settings: Settings
) -> None:
    assert folder.process(drop_file(folder, "first.jsonl", good(1))) is not None
    committed = folder.events_file.read_bytes()
    src = drop_file(folder, "second.jsonl", MIXED)
    # What a crash inside second.jsonl leaves: the journal, and a torn tail on both outputs.
    folder.journal.write_text(
        json.dumps(
            {
                "file": src.name,
                "dest": str(folder.processed_dir / src.name),
                "events": len(committed),
                "dead": 0,
            }
        ),
        encoding="utf-8",
    )
    with folder.events_file.open("ab") as fh:
        fh.write(b'{"id": "half-writ')
    folder.dead_letter_file.write_text('{"source": "x"}\n', encoding="utf-8")

    restarted = DropFolder(settings)
    restarted.prepare()
    assert not restarted.journal.exists()
    assert restarted.events_file.read_bytes() == committed
    assert restarted.dead_letter_file.read_bytes() == b""
    restarted.scan()
    assert restarted.scan() == [src]
    restarted.process(src)
    assert len(lines(restarted.events_file)) == 3
    assert len(lines(restarted.dead_letter_file)) == 2


def test_restart_after_a_crash_past_the_move_keeps_the_output(folder: DropFolder, settings: Settings) -> None:
    outcome = folder.process(drop_file(folder, "done.jsonl", MIXED))
    assert outcome is not None and outcome.dest is not None
    folder.journal.write_text(
        json.dumps({"file": "done.jsonl", "dest": str(outcome.dest), "events": 0, "dead": 0})
    )
    DropFolder(settings).prepare()
    assert not folder.journal.exists()
    assert len(lines(folder.events_file)) == 2
    assert len(lines(folder.dead_letter_file)) == 2


def test_an_unreadable_journal_stops_the_watcher_loudly(folder: DropFolder) -> None:
    (folder.drop_dir / JOURNAL).write_text("{", encoding="utf-8")
    with pytest.raises(OutputError, match="unreadable journal"):
        folder.prepare()


def test_the_watcher_task_counts_and_stops(settings: Settings) -> None:
    stats = IngestStats()

    async def scenario() -> None:
        folder = DropFolder(settings, stats)
        task = asyncio.create_task(folder.run())
        async with asyncio.timeout(10):
            while stats.last_scan_at is None:
                await asyncio.sleep(0.01)
            assert stats.running and stats.last_scan_ok
            drop_file(folder, "one.jsonl", MIXED)
            drop_file(folder, "two.json", json.dumps({"records": [GOOD, 7]}))
            while stats.files_processed < 2:
                await asyncio.sleep(0.01)
        folder.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert stats.counters() == {
        "events": 3,
        "dead_letters": 3,
        "control_records": 0,
        "files_processed": 2,
        "files_failed": 0,
    }
    assert not stats.running
    assert stats.pending_files == 0


def test_the_watcher_reports_output_failures(settings: Settings, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    broken = settings.model_copy(
        update={"output": settings.output.model_copy(update={"events_file": blocked})}
    )
    stats = IngestStats()

    async def scenario() -> None:
        folder = DropFolder(broken, stats)
        folder.prepare()
        drop_file(folder, "stuck.jsonl", good(1))
        task = asyncio.create_task(folder.run())
        async with asyncio.timeout(10):
            while stats.last_error is None:
                await asyncio.sleep(0.01)
        folder.stop()
        await asyncio.wait_for(task, 5)
        assert (folder.drop_dir / "stuck.jsonl").exists()

    asyncio.run(scenario())
    assert not stats.last_scan_ok
    assert "cannot write output" in (stats.last_error or "")
    assert stats.files_processed == 0

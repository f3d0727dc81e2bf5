"""The file tail, against real files and a real store: complete lines only, dead letters, restarts from the
stored offset, rotation (rename + create, copytruncate), files that appear later, and exact event counts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import vigil.streams.tail as tail_module
from vigil.events.deadletter import DeadLetter
from vigil.events.model import Event
from vigil.settings import Settings, load_settings
from vigil.store.sqlite import Store, StoreError
from vigil.streams.tail import FileTail, TailStats

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


def block(*numbers: int) -> str:
    return "".join(good(n) + "\n" for n in numbers)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f"data_dir: {tmp_path / 'var'}\n"
        "ingest:\n"
        "  poll_interval: 0.05\n"
        '  tail_files: ["{data_dir}/logs/app.jsonl"]\n',
        encoding="utf-8",
    )
    return load_settings(profile, env={})


@pytest.fixture
def log_path(settings: Settings) -> Path:
    path = settings.ingest.tail_files[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "vigil.db")


def append(path: Path, text: str) -> None:
    with path.open("ab") as fh:
        fh.write(text.encode("utf-8"))


def numbers(store: Store) -> list[int]:
    """The events of the log, in order, by the number their record was written with."""
    return [int(str(s.event.raw["correlationId"])[2:]) for s in store.read_events(0, 1_000_000)]


def stored(store: Store, path: Path) -> dict[str, object]:
    value = store.offset(f"tail:{path}")
    assert value is not None
    loaded: dict[str, object] = json.loads(value)
    return loaded


def test_settings_resolve_tail_files(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.ingest.tail_files == [tmp_path / "var" / "logs" / "app.jsonl"]
    monkeypatch.chdir(tmp_path)
    from_env = load_settings(env={"VIGIL_INGEST__TAIL_FILES": '["rel.jsonl", "{data_dir}/x.jsonl"]'})
    assert from_env.ingest.tail_files == [tmp_path / "rel.jsonl", tmp_path / "var" / "x.jsonl"]
    assert load_settings(env={}).ingest.tail_files == []


def test_only_complete_lines_are_taken(settings: Settings, store: Store, log_path: Path) -> None:
    tail = FileTail(settings, store)
    line2 = good(2)
    append(log_path, good(1) + "\n" + line2[:25])
    assert tail.poll() == 1
    append(log_path, line2[25:] + "\n" + good(3))  # the third line has no newline yet
    assert tail.poll() == 1
    assert numbers(store) == [1, 2]
    append(log_path, "\n")
    assert tail.poll() == 1
    assert numbers(store) == [1, 2, 3]
    offset = stored(store, log_path)
    st = log_path.stat()
    assert (offset["inode"], offset["dev"], offset["pos"], offset["line"]) == (
        st.st_ino,
        st.st_dev,
        st.st_size,
        3,
    )
    assert isinstance(offset["head"], str) and len(offset["head"]) == 64
    assert tail.stats.counters() == {
        "events": 3,
        "dead_letters": 0,
        "control_records": 0,
        "bytes": st.st_size,
        "lines": 3,
        "rotations": 0,
        "truncations": 0,
    }
    assert tail.stats.positions == {str(log_path): st.st_size}


def test_bad_lines_are_dead_lettered_with_their_place_in_the_file(
    settings: Settings, store: Store, log_path: Path
) -> None:
    tail = FileTail(settings, store)
    first = block(1)
    append(log_path, first)
    tail.poll()
    # A batch that starts with a broken line (which the reader could take for a multi-line document).
    rest = "{not json\n" + good(2) + "\n42\n\n" + good(3) + "\n"
    append(log_path, rest)
    assert tail.poll() == 2
    assert numbers(store) == [1, 2, 3]
    dead = sorted(store.dead_letters(), key=lambda d: d["line"])
    source = f"tail:{log_path}"
    assert [(d["source"], d["line"], d["offset"]) for d in dead] == [
        (source, 2, len(first)),
        (source, 4, len(first) + len("{not json\n") + len(good(2)) + 1),
    ]
    assert dead[0]["text"] == "{not json"
    assert "expected a JSON object" in dead[1]["reason"]
    assert (tail.stats.events, tail.stats.dead_letters, tail.stats.lines) == (3, 2, 6)


def test_restart_resumes_from_the_stored_offset(settings: Settings, store: Store, log_path: Path) -> None:
    append(log_path, block(1, 2))
    first = FileTail(settings, store)
    assert first.poll() == 2
    first.close()
    append(log_path, block(3, 4))
    second = FileTail(settings, store)
    assert second.poll() == 2
    assert second.poll() == 0
    assert numbers(store) == [1, 2, 3, 4]
    # A third start with nothing new reads nothing.
    assert FileTail(settings, store).poll() == 0
    assert store.count_events() == 4


def test_rename_and_create_finishes_the_old_file_first(
    settings: Settings, store: Store, log_path: Path
) -> None:
    tail = FileTail(settings, store)
    append(log_path, block(1, 2))
    tail.poll()
    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)
    append(rotated, block(3) + good(4)[:10])  # the writer has not reopened yet
    log_path.write_text("", encoding="utf-8")  # create: the new file is still empty
    assert tail.poll() == 1
    append(rotated, good(4)[10:] + "\n")  # still following the old file through its descriptor
    assert tail.poll() == 1
    append(log_path, block(5, 6))  # the writer moved to the new file
    append(rotated, block(7)[:5])  # a torn last line left in the old one
    assert tail.poll() == 2
    assert numbers(store) == [1, 2, 3, 4, 5, 6]
    assert tail.stats.rotations == 1
    assert [d["reason"] for d in store.dead_letters()] == [
        "incomplete last line of a rotated file (no newline)"
    ]
    assert stored(store, log_path)["inode"] == log_path.stat().st_ino
    append(log_path, block(8))
    assert tail.poll() == 1
    assert numbers(store) == [1, 2, 3, 4, 5, 6, 8]


def test_a_path_that_disappears_and_comes_back(settings: Settings, store: Store, log_path: Path) -> None:
    tail = FileTail(settings, store)
    append(log_path, block(1))
    tail.poll()
    moved = log_path.with_name("archive.jsonl")
    log_path.rename(moved)
    append(moved, block(2))
    assert tail.poll() == 1  # read through the open descriptor
    append(log_path, block(3))
    assert tail.poll() == 1
    assert numbers(store) == [1, 2, 3]
    assert tail.stats.rotations == 1


def copytruncate(path: Path, *, keep_copy: bool = True) -> None:
    """logrotate's copytruncate: copy the file aside, then truncate it in place (same inode)."""
    if keep_copy:
        shutil.copyfile(path, path.with_name(path.name + ".1"))
    with path.open("r+b") as fh:
        fh.truncate(0)


def test_copytruncate_reads_the_unread_lines_from_the_copy(
    settings: Settings, store: Store, log_path: Path
) -> None:
    tail = FileTail(settings, store)
    append(log_path, block(1, 2))
    tail.poll()
    inode = log_path.stat().st_ino
    append(log_path, block(3))  # written after the last poll, before the rotation
    copytruncate(log_path)
    append(log_path, block(4))
    assert tail.poll() == 2
    assert numbers(store) == [1, 2, 3, 4]
    assert (tail.stats.truncations, tail.stats.rotations) == (1, 0)
    assert log_path.stat().st_ino == inode
    # It grows back past the old position before the next poll: the head hash notices.
    append(log_path, block(5))
    tail.poll()
    copytruncate(log_path)
    append(log_path, block(6, 7, 8, 9))
    assert tail.poll() == 4
    assert numbers(store) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert tail.stats.truncations == 2


def test_copytruncate_without_a_copy_starts_again_from_zero(
    settings: Settings, store: Store, log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tail = FileTail(settings, store)
    append(log_path, block(1, 2, 3))
    tail.poll()
    append(log_path, block(4))  # lost with the copy
    copytruncate(log_path, keep_copy=False)
    append(log_path, block(5))
    with caplog.at_level(logging.WARNING):
        assert tail.poll() == 1
    assert numbers(store) == [1, 2, 3, 5]
    assert "truncated" in caplog.text
    assert stored(store, log_path)["pos"] == len(block(5))


def test_a_file_that_appears_later_is_waited_for(settings: Settings, store: Store, log_path: Path) -> None:
    stats = TailStats()
    tail = FileTail(settings, store, stats)
    assert tail.poll() == 0
    assert (stats.files, stats.files_waiting, stats.errors) == (1, 1, {})
    assert store.offset(f"tail:{log_path}") is None
    append(log_path, block(1, 2))
    assert tail.poll() == 2
    assert stats.files_waiting == 0


def test_restart_after_rotation_while_down_reads_the_rest_from_dot_1(
    settings: Settings, store: Store, log_path: Path
) -> None:
    first = FileTail(settings, store)
    append(log_path, block(1, 2))
    first.poll()
    first.close()
    append(log_path, block(3))  # never read before the stop
    log_path.rename(log_path.with_name(log_path.name + ".1"))
    append(log_path, block(4, 5))
    second = FileTail(settings, store)
    assert second.poll() == 3
    assert numbers(store) == [1, 2, 3, 4, 5]
    assert stored(store, log_path)["inode"] == log_path.stat().st_ino


def test_restart_after_copytruncate_while_down_reads_the_rest_from_the_copy(
    settings: Settings, store: Store, log_path: Path
) -> None:
    first = FileTail(settings, store)
    append(log_path, block(1, 2))
    first.poll()
    first.close()
    append(log_path, block(3))
    copytruncate(log_path)
    append(log_path, block(4))
    assert FileTail(settings, store).poll() == 2
    assert numbers(store) == [1, 2, 3, 4]


def test_restart_after_replacement_without_the_old_file_warns(
    settings: Settings, store: Store, log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = FileTail(settings, store)
    append(log_path, block(1, 2))
    first.poll()
    first.close()
    log_path.unlink()
    append(log_path, block(3))
    with caplog.at_level(logging.WARNING):
        assert FileTail(settings, store).poll() == 1
    assert "may be lost" in caplog.text
    assert numbers(store) == [1, 2, 3]


def test_a_crash_during_the_commit_keeps_neither_events_nor_offset(
    settings: Settings, store: Store, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(BaseException):
        pass

    append(log_path, block(1, 2))
    FileTail(settings, store).poll()
    append(log_path, block(3, 4))
    crashing = FileTail(settings, store)
    real = store.accept

    def accept(*args: Any, **kw: Any) -> tuple[int, int]:
        raise Crash  # the process dies inside the transaction: nothing of the batch is stored

    monkeypatch.setattr(store, "accept", accept)
    with pytest.raises(Crash):
        crashing.poll()
    monkeypatch.setattr(store, "accept", real)
    assert stored(store, log_path)["pos"] == len(block(1, 2))
    assert FileTail(settings, store).poll() == 2
    assert numbers(store) == [1, 2, 3, 4]  # each line once: events and offset commit together


def test_a_failed_commit_is_retried_without_loss_or_rereading(
    settings: Settings, store: Store, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tail = FileTail(settings, store)
    append(log_path, block(1, 2))
    real = store.accept
    calls: list[int] = []

    def accept(*args: Any, **kw: Any) -> tuple[int, int]:
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("database is locked")
        return real(*args, **kw)

    monkeypatch.setattr(store, "accept", accept)
    assert tail.poll() == 0
    assert tail.stats.errors == {str(log_path): "database is locked"}
    time.sleep(0.06)  # past the back-off
    assert tail.poll() == 2
    assert tail.stats.errors == {}
    assert stored(store, log_path)["pos"] == len(block(1, 2))
    assert FileTail(settings, store).poll() == 0
    assert numbers(store) == [1, 2]


def test_an_over_long_line_is_dead_lettered_without_reading_it_whole(
    tmp_path: Path, store: Store, log_path: Path
) -> None:
    settings = load_settings(
        env={"VIGIL_DATA_DIR": str(tmp_path / "var"), "VIGIL_INGEST__MAX_RECORD_BYTES": "1KiB"}
    )
    tail = FileTail(settings, store, paths=[log_path])
    append(log_path, block(1))
    huge = json.dumps({**GOOD, "pad": "x" * 5000})
    append(log_path, huge[:3000])
    assert tail.poll() == 1
    assert store.dead_letters() == []  # not complete yet
    append(log_path, huge[3000:] + "\n" + block(2))
    assert tail.poll() == 1
    [dead] = store.dead_letters()
    assert (dead["line"], dead["offset"], dead["length"]) == (2, len(block(1)), len(huge) + 1)
    assert "exceeds max_record_bytes" in dead["reason"]
    assert numbers(store) == [1, 2]


def test_steps_are_bounded_and_files_take_turns(
    settings: Settings, store: Store, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail_module, "MAX_BATCH_LINES", 7)
    other = log_path.with_name("other.jsonl")
    append(log_path, block(*range(1, 31)))
    append(other, block(*range(101, 111)))
    sources: list[tuple[str, int]] = []
    real = store.accept

    def accept(events: list[Event], dead: list[DeadLetter], source: str, **kw: Any) -> tuple[int, int]:
        sources.append((Path(source).name, len(events)))
        return real(events, dead, source, **kw)

    monkeypatch.setattr(store, "accept", accept)
    tail = FileTail(settings, store, paths=[log_path, other])
    assert tail.poll() == 40
    assert sources[:4] == [("app.jsonl", 7), ("other.jsonl", 7), ("app.jsonl", 7), ("other.jsonl", 3)]
    assert sorted(numbers(store)) == [*range(1, 31), *range(101, 111)]


def test_an_unreadable_path_is_reported_once_and_retried(
    settings: Settings, store: Store, log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_path.mkdir()  # a directory where the file should be
    tail = FileTail(settings, store)
    with caplog.at_level(logging.DEBUG, logger="vigil.streams.tail"):
        tail.poll()
        time.sleep(0.06)
        tail.poll()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not a regular file" in errors[0].getMessage()
    assert "not a regular file" in tail.stats.errors[str(log_path)]
    log_path.rmdir()
    append(log_path, block(1))
    time.sleep(0.25)  # past the back-off (doubled at each failure)
    assert tail.poll() == 1
    assert tail.stats.errors == {}


def test_the_task_publishes_counts_and_stops(settings: Settings, store: Store, log_path: Path) -> None:
    stats = TailStats()
    published: list[int] = []

    async def scenario() -> None:
        tail = FileTail(settings, store, stats)
        task = asyncio.create_task(tail.run(lambda: published.append(store.count_events())))
        async with asyncio.timeout(10):
            while stats.last_poll_at is None:
                await asyncio.sleep(0.01)
            assert stats.running and stats.files_waiting == 1
            append(log_path, block(1, 2) + good(3)[:7])
            while stats.events < 2:
                await asyncio.sleep(0.01)
            append(log_path, good(3)[7:] + "\n")
            log_path.rename(log_path.with_name("app.jsonl.1"))
            append(log_path, block(4))
            while stats.events < 4:
                await asyncio.sleep(0.01)
        tail.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert not stats.running
    assert numbers(store) == [1, 2, 3, 4]
    assert published and published[-1] == 4
    assert (stats.events, stats.rotations, stats.files_waiting) == (4, 1, 0)


def test_exact_count_across_everything(settings: Settings, store: Store, log_path: Path) -> None:
    """Appends in pieces, a restart, a rename rotation, a copytruncate and a restart again: each event once."""
    expected: list[int] = []
    n = 0

    def write(count: int, path: Path = log_path) -> None:
        nonlocal n
        text = block(*range(n + 1, n + count + 1))
        half = len(text) // 2
        append(path, text[:half])
        append(path, text[half:])
        expected.extend(range(n + 1, n + count + 1))
        n += count

    tail = FileTail(settings, store)
    tail.poll()  # waiting for the file
    write(10)
    tail.poll()
    write(5)
    tail.close()
    tail = FileTail(settings, store)
    tail.poll()
    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)
    write(3, rotated)
    write(4)
    tail.poll()
    write(2)
    os.remove(rotated)
    copytruncate(log_path)
    write(6)
    tail.poll()
    tail.close()
    write(1)
    assert FileTail(settings, store).poll() == 1
    assert numbers(store) == expected
    assert store.count_events() == len({s.event.id for s in store.read_events(0, 10_000)}) == 31

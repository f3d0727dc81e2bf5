"""Group commit: writes queued while the store is busy share one transaction, and fail only on their own."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import ev
from vigil.store.sqlite import Store, StoreError


def _queued_behind_a_busy_store(store: Store, writers: list[Callable[[], None]]) -> None:
    """Start ``writers`` in threads while the store's lock is held (another write is running), let them all
    queue, then let the store go and wait for them."""
    started = threading.Barrier(len(writers) + 1)

    def run(writer: Callable[[], None]) -> None:
        started.wait()
        writer()

    threads = [threading.Thread(target=run, args=(w,)) for w in writers]
    with store._lock:
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.2)
    for t in threads:
        t.join(10)


def test_writes_queued_meanwhile_share_one_transaction_and_each_gets_its_own_result(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    group = store._group
    results: dict[int, list[int]] = {}

    def send(i: int) -> None:
        results[i] = store.accept([ev(f"e{i}", i)], (), "http")

    _queued_behind_a_busy_store(store, [functools.partial(send, i) for i in range(5)])
    assert group.transactions == 1 and group.writes == 5  # (one thread ran all five)
    assert sorted(s for r in results.values() for s in r) == [1, 2, 3, 4, 5]
    by_id = {s.event.id: s.seq for s in store.read_events(0)}
    assert all(by_id[f"e{i}"] == results[i][0] for i in range(5))


def test_a_failing_write_fails_alone_when_its_group_is_redone(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    outcome: dict[str, object] = {}

    def bad() -> None:
        store._db.execute("INSERT INTO no_such_table VALUES (1)")

    def run(name: str, fn: object) -> None:
        try:
            outcome[name] = store._write(fn)
        except StoreError as exc:
            outcome[name] = exc

    jobs = [
        ("a", lambda: store._set_offset("a", "1")),
        ("bad", bad),
        ("b", lambda: store._set_offset("b", "2")),
    ]
    _queued_behind_a_busy_store(store, [functools.partial(run, *job) for job in jobs])
    assert isinstance(outcome["bad"], StoreError) and "no_such_table" in str(outcome["bad"])
    assert outcome["a"] is None and outcome["b"] is None
    assert store.offset("a") == "1" and store.offset("b") == "2"  # committed, each on its own
    assert store._group.transactions == 4  # the group's, rolled back, then one each


def test_a_write_that_fails_alone_raises_a_store_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    with pytest.raises(StoreError, match="no_such_table"):
        store._write(lambda: store._db.execute("SELECT * FROM no_such_table"))
    assert store.accept([ev("after", 0)], (), "http") == [1]  # and the store goes on
    with sqlite3.connect(tmp_path / "vigil.db") as conn:
        assert conn.execute("SELECT count(*) FROM event_ids").fetchone() == (1,)

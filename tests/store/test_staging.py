"""Staging: a dropped file's batches reach the event log and the dead letters at once, or not at all."""

from __future__ import annotations

from pathlib import Path

from tests.detectors.stateful_helpers import ev
from vigil.events.deadletter import DeadLetter
from vigil.store import staging
from vigil.store.sqlite import Store


def test_staged_work_is_invisible_until_published_then_moves_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    store.append_events([ev("before", 0)], "http")
    bad = DeadLetter(source="file:a.jsonl", reason="bad JSON", line=3, text="{")
    store.stage("a.jsonl@1", [ev("a1", 1), ev("a2", 2)])
    store.stage("a.jsonl@1", [ev("a3", 3), ev("before", 0)], [bad])  # a re-delivered event, a dead letter
    assert store.count_events() == 1 and not store.dead_letters()
    assert not store.published("a.jsonl@1")

    assert store.publish("a.jsonl@1", "file:a.jsonl") == 3  # new to the log: the duplicate is not
    assert [s.event.id for s in store.read_events(0)] == ["before", "a1", "a2", "a3"]
    assert store.last_seq() == store.read_events(0)[-1].seq
    [letter] = store.dead_letters()
    assert letter["source"] == "file:a.jsonl" and letter["reason"] == "bad JSON"
    assert store.published("a.jsonl@1")
    assert store.publish("a.jsonl@1", "file:a.jsonl") == 0  # nothing staged any more

    store.forget_published("a.jsonl@1")
    assert not store.published("a.jsonl@1")


def test_discarded_work_never_reaches_the_log(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    store.stage("b.jsonl@1", [ev("b1", 1)], [DeadLetter(source="file:b.jsonl", reason="too big")])
    store.discard("b.jsonl@1")
    assert store.publish("b.jsonl@1", "file:b.jsonl") == 0
    assert store.count_events() == 0 and not store.dead_letters()
    store.stage("b.jsonl@1", [])  # nothing to hold: no transaction at all
    store.close()


def test_a_large_unit_is_published_in_bounded_batches(tmp_path: Path) -> None:
    """A dropped file of many events reaches the log as batches of at most MOVE_BATCH events (one batch
    held the whole file, which the publish and then the detect stage read into memory whole)."""
    store = Store(tmp_path / "vigil.db")
    n = staging.MOVE_BATCH * 2 + 500
    for start in range(0, n, 700):  # staged in the reader's own batch sizes
        store.stage("big.jsonl@1", [ev(f"e{i}", i) for i in range(start, min(n, start + 700))])
    assert store.publish("big.jsonl@1", "file:big.jsonl") == n
    sizes = [last - first + 1 for first, last in store._db.execute("SELECT first, last FROM event_batches")]
    assert sizes == [staging.MOVE_BATCH, staging.MOVE_BATCH, 500]
    assert [s.event.id for s in store.read_events(0, limit=n)] == [f"e{i}" for i in range(n)]
    store.close()

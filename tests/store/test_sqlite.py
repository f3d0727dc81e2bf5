"""The SQLite store: event log, findings by identity, dead letters, offsets, snapshots, retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import at, ev
from vigil.detectors.finding import Finding, finding_id
from vigil.events.deadletter import DeadLetter
from vigil.events.model import FrozenMap
from vigil.store import sqlite as sqlite_mod
from vigil.store.sqlite import Store, StoreError


def _finding(rule: str = "r.one", seconds: float = 0, eid: str = "e1", group: str = "n1") -> Finding:
    return Finding(
        rule=rule,
        title="t",
        severity="high",
        score=70,
        event_ids=(eid,),
        time=at(seconds),
        group=FrozenMap({"node.id": group}),
    )


def test_event_log_round_trip_keeps_order_and_content(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    events = [ev(f"e{i}", i, ip="203.0.113.9", raw={"n": i, "nested": {"k": None}}) for i in range(5)]
    assert store.append_events(events, "http") == (1, 5)
    assert store.append_events([], "http") == (0, 0)
    assert store.append_events(events[:2], "file") == (0, 0)  # a re-delivery: already in the log
    first, last = store.append_events([ev("e5", 5), ev("e6", 6)], "file")
    assert first > 5 and last == first + 1  # (skipped duplicates may leave gaps: seqs only increase)
    back = store.read_events(0, limit=100)
    assert [s.seq for s in back] == [1, 2, 3, 4, 5, first, last]
    assert back[0].event == events[0]
    assert dict(back[4].event.raw) == {"n": 4, "nested": {"k": None}}
    assert [s.seq for s in store.read_events(5, limit=1)] == [first]
    assert store.last_seq() == last and store.count_events() == 7
    store.close()
    # durable: a new connection sees everything
    again = Store(tmp_path / "vigil.db")
    assert again.count_events() == 7


def test_duplicates_are_recognised_by_event_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    first = store.accept([ev("a", 0), ev("b", 1)], (), "http")
    again = store.accept([ev("b", 1), ev("c", 2), ev("c", 2)], (), "http")  # a retry, and a repeat inside
    assert first == [1, 2] and again[0] == 0 and again[1] > 2 and again[2] == 0
    assert [s.event.id for s in store.read_events(0)] == ["a", "b", "c"]


def test_a_batch_is_one_statement_whatever_its_ids(tmp_path: Path) -> None:
    """A batch goes in as one statement (ids and offsets as JSON, the bodies as one blob): ids with quotes,
    escapes and non-ASCII, and bodies of any length, come back exactly, in order, with consecutive seqs."""
    store = Store(tmp_path / "vigil.db")
    odd = ['quote"and\\back', "tab\tnew\nline", "ünï©ødé 🛡", "x" * 300]
    events = [ev(f"{name}#{i}", i, raw={"i": i, "s": "é" * 100 * i}) for i, name in enumerate(odd)]
    assert store.accept(events, (), "http") == [1, 2, 3, 4]
    again = [ev("new", 5), events[0], ev("newer", 6), ev("new", 5)]  # a duplicate of the log, one inside
    seqs = store.accept(again, (), "http")
    assert seqs[1] == seqs[3] == 0 and 4 < seqs[0] < seqs[2]  # (an ignored row may use up a number)
    back = store.read_events(0, limit=10)
    assert [s.event for s in back] == [*events, again[0], again[2]]
    assert [s.seq for s in back][-2:] == [seqs[0], seqs[2]] and store.last_seq() == seqs[2]


def test_findings_are_kept_once_by_identity(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    a, b = _finding(eid="e1"), _finding(eid="e2")
    assert finding_id(a) != finding_id(b)
    assert finding_id(a) == finding_id(_finding(eid="e1"))  # same rule, group, time, events: same finding
    assert store.commit_detection([(1, a), (2, b)], 2, None) == 2
    assert store.commit_detection([(1, a), (2, b), (3, _finding(eid="e3"))], 3, None) == 1  # a replay
    assert store.count_findings() == 3
    assert store.cursor() == 3
    newest = store.findings(limit=10)
    assert sorted(f["event_ids"][0] for f in newest) == ["e1", "e2", "e3"]
    assert all(
        f["id"] == finding_id(_finding(eid=f["event_ids"][0])) and f["rule"] == "r.one" for f in newest
    )
    assert store.findings(rule="other") == []


def test_finding_and_incident_ids_start_with_their_time(tmp_path: Path) -> None:
    """The findings and incidents tables only grow: ids that start with the time (12 hex digits of ms,
    32 hex digits in all) put new rows at the edge of their keys instead of on a random page each."""
    later = [_finding(seconds=s, eid=f"e{s}", group=f"n{s % 7}") for s in range(0, 3000, 37)]
    ids = [finding_id(f) for f in later]
    assert ids == sorted(ids) and all(len(i) == 32 for i in ids)
    assert ids[0].startswith(format(int(at(0).timestamp() * 1000), "012x"))
    store = Store(tmp_path / "vigil.db")
    store.commit_detection([(n, f) for n, f in enumerate(later, 1)], len(later), None)
    incidents = sorted(store.incidents(limit=100), key=lambda i: i["opened_ms"])
    assert [i["id"][:12] for i in incidents] == [format(i["opened_ms"], "012x") for i in incidents]


def test_snapshot_commits_with_the_cursor(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    assert store.snapshot() is None and store.cursor() == 0
    store.commit_detection([], 10, b'{"version":1}')
    store.commit_detection([], 12, None)  # cursor moves, snapshot stays at 10
    assert store.snapshot() == (10, b'{"version":1}')
    assert store.cursor() == 12
    assert store.cursor("other") == 0


def test_dead_letters_and_offsets(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    store.add_dead_letters([DeadLetter(source="in.jsonl", reason="not JSON", line=3)], "file")
    assert store.dead_letters() == [{"source": "in.jsonl", "reason": "not JSON", "line": 3}]
    assert store.offset("tail:/var/log/x") is None
    store.set_offset("tail:/var/log/x", "1234")
    store.set_offset("tail:/var/log/x", "2048")
    assert store.offset("tail:/var/log/x") == "2048"


def test_prune_keeps_unprocessed_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(tmp_path / "vigil.db")
    store.append_events([ev(f"e{i}", i) for i in range(6)], "http")
    far_future = 2**62
    assert store.prune_events(far_future, processed_through=4) == 4
    assert [s.seq for s in store.read_events(0)] == [5, 6]
    # in slices (each its own transaction): everything due goes, nothing else
    monkeypatch.setattr(sqlite_mod, "PRUNE_SLICE", 3)
    store.append_events([ev(f"f{i}", i) for i in range(10)], "http")
    assert store.prune_events(far_future, processed_through=14) == 10  # slices of 3, 3, 3 and 1
    assert [s.seq for s in store.read_events(0)] == [15, 16]
    assert store.prune_events(0, processed_through=16) == 0  # nothing received before the cut-off


def test_prune_stops_at_the_first_batch_received_at_or_after_the_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "vigil.db")
    clock = [1_000.0]
    monkeypatch.setattr(sqlite_mod.time, "time", lambda: clock[0])
    for received in (1_000.0, 2_000.0, 1_500.0, 3_000.0):  # (a clock stepped back for the third batch)
        clock[0] = received
        store.append_events([ev(f"e{received}-{i}", i) for i in range(3)], "http")
    # received before 2,000 s: the first batch only; the third is after the first one received at 2,000
    assert store.prune_events(2_000_000, processed_through=12) == 3
    assert [s.seq for s in store.read_events(0)] == list(range(4, 13))
    assert store.prune_events(2_000_000, processed_through=12) == 0
    assert store.prune_events(3_000_001, processed_through=8) == 5  # not past what is processed
    assert store.prune_events(3_000_001, processed_through=12) == 4


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "vigil.db").close()
    db = sqlite3.connect(tmp_path / "vigil.db")
    db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "vigil.db")


def test_an_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        Store(blocker / "vigil.db")


def test_a_full_disk_fails_the_write_and_the_store_recovers(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    store.append_events([ev("first", 0)], "http")
    pages = store._read("PRAGMA page_count")[0][0]
    store._read(f"PRAGMA max_page_count = {pages + 2}")  # a disk that is (nearly) full
    big = [ev(f"e{i}", i, raw={"pad": "x" * 4000}) for i in range(50)]
    with pytest.raises(StoreError, match="full"):
        store.accept(big, (), "http")
    assert store.count_events() == 1  # nothing of the failed batch
    store._read("PRAGMA max_page_count = 1073741823")  # space again: writes resume, nothing is stuck
    assert len([s for s in store.accept(big, (), "http") if s]) == 50
    assert store.count_events() == 51


def test_a_retried_requests_dead_letters_are_stored_once_and_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "v.db")
    try:
        bad = DeadLetter(source="http", reason="not JSON", line=3, offset=40, text="{oops")
        other = DeadLetter(source="http", reason="not JSON", line=4, offset=46, text="{oops")
        store.accept([], [bad], "events")
        store.accept([], [bad, other], "events")  # the retry, and a new record at another position
        store.accept([], [bad], "eventgrid")  # another source: its own dead letter
        assert [(d["line"], d["source"]) for d in store.dead_letters()] == [
            (3, "http"),
            (4, "http"),
            (3, "http"),
        ]
        db = sqlite3.connect(tmp_path / "v.db")
        assert sorted(r[0] for r in db.execute("SELECT repeats FROM dead_letter_ids")) == [0, 0, 1]
        db.close()
    finally:
        store.close()


def _activity_body(n: int, start: int = 0) -> bytes:
    """JSON Lines of ``n`` Activity Log records (each a distinct event)."""
    from bench.gen_activity import lines

    return b"".join(lines(start + n, seed=3)[start:])


def test_a_raw_batch_is_stored_as_its_bytes_and_read_back_as_the_same_events(tmp_path: Path) -> None:
    """HTTP ingestion keeps a body's bytes: reading it back normalises them again and gives exactly the events
    (and sequence numbers) accepted, with duplicates (of the log, or inside the body) skipped as before."""
    from vigil.events.batch import BatchNormalizer
    from vigil.store import eventlog
    from vigil.store.eventlog import RawBody

    store = Store(tmp_path / "vigil.db")
    body = _activity_body(20)
    events = BatchNormalizer().body(body, "http").events
    assert len(events) == 20
    assert store.accept(events, (), "http:events", raw=RawBody(body, "auto", 1 << 20, 1 << 26)) == [
        *range(1, 21)
    ]
    # a retry of half of it plus three new records, one of them twice (a repeat inside the body)
    more = _activity_body(10, start=10) + _activity_body(3, start=20) + _activity_body(1, start=20)
    again = BatchNormalizer().body(more, "http").events
    seqs = store.accept(again, (), "http:events", raw=RawBody(more, "auto", 1 << 20, 1 << 26))
    assert seqs[:10] == [0] * 10 and seqs[13] == 0 and 20 < seqs[10] < seqs[11] < seqs[12]
    back = store.read_events(0, limit=100)
    assert [s.event for s in back] == [*events, *again[10:13]]
    assert [s.seq for s in back] == [*range(1, 21), *seqs[10:13]]
    assert [s.seq for s in store.read_events(15, limit=3)] == [16, 17, 18]  # from inside a batch
    assert store.event(events[7].id) == events[7] and store.event("act:nope") is None
    cache: dict[int, dict[int, object]] = {}  # (the response stage's: the last batch read, by seq)
    with sqlite3.connect(tmp_path / "vigil.db") as conn:
        assert eventlog.lookup(conn, events[3].id, cache) == events[3] and list(cache) == [20]
        assert len(cache[20]) == 20  # the whole batch, decoded once
        assert eventlog.lookup(conn, again[11].id, cache) == again[11] and list(cache) == [seqs[12]]
        assert eventlog.lookup(conn, again[0].id, cache) == events[10]  # (a duplicate: its first copy)
    with sqlite3.connect(tmp_path / "vigil.db") as conn:
        forms = conn.execute("SELECT form, length(body) FROM event_batches ORDER BY last").fetchall()
    assert forms == [("raw", len(body)), ("raw", len(more))]


def test_events_a_raw_batch_no_longer_gives_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Should re-normalising a stored body give other events (here: a smaller record limit, as a changed
    normaliser might), the ones that no longer come out are logged and counted, never silently lost."""
    from vigil.events.batch import BatchNormalizer
    from vigil.store import eventlog
    from vigil.store.eventlog import RawBody

    store = Store(tmp_path / "vigil.db")
    body = _activity_body(4)
    events = BatchNormalizer().body(body, "http").events
    store.accept(events, (), "http:events", raw=RawBody(body, "auto", 1000, 1 << 26))  # (records are ~1.5 KB)
    before = eventlog.MISSING[0]
    assert store.read_events(0) == []
    assert eventlog.MISSING[0] == before + 4
    assert "4 stored events of sequence 1..4 no longer come out of their batch" in caplog.text

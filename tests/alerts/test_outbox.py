"""The outbox on a real SQLite file: durable before sending, compare-and-set states, recovery after a crash,
the stats the API shows, pruning, the schema guard, and redaction before anything is written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vigil.alerts.model import Alert, AlertKind, dedup_key
from vigil.alerts.outbox import MAX_ERROR, Outbox, OutboxState
from vigil.store.sqlite import StoreError

CANARY = "CanarySecretValue0123456789abcdefXYZ"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alert(n: int = 1, **changes: object) -> Alert:
    base = Alert(
        kind=AlertKind.TRIGGER, dedup_key=dedup_key("t.rule", f"g{n}"), rule="t.rule", title=f"alert {n}",
        severity="high", summary="summary", time=999.0, group={"ip": "203.0.113.9"}, incident_id="inc-1",
        details={"score": 0.9, "event_ids": ["e1", "e2"]}, links={"incident": "http://vigil/v1/incidents/inc-1"},
    )  # fmt: skip
    return Alert.from_json({**base.to_json(), **changes})


def test_an_enqueued_alert_is_durable_and_due_at_once(tmp_path: Path) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)
    entry_id = outbox.enqueue("pagerduty", alert())
    outbox.close()
    reopened = Outbox(tmp_path / "vigil.db", clock=clock)  # a new connection (a restart) sees it
    entry = reopened.get(entry_id)
    assert entry is not None
    assert entry.alert == alert() and entry.state is OutboxState.PENDING and entry.attempts == 0
    assert (entry.sink, entry.kind, entry.dedup_key) == ("pagerduty", "trigger", alert().dedup_key)
    assert entry.created == entry.next_at == 1000.0 and entry.sent_at is None
    assert [e.id for e in reopened.due("pagerduty", 1000.0)] == [entry_id]
    assert reopened.due("teams", 1000.0) == []
    assert reopened.get(entry_id + 1) is None
    db = sqlite3.connect(tmp_path / "vigil.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'outbox_schema'").fetchone() == ("1",)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_due_is_oldest_first_respects_next_at_and_limit(tmp_path: Path) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)
    ids = outbox.enqueue_many(["a", "b"], alert(1)) + [outbox.enqueue("a", alert(n)) for n in (2, 3, 4)]
    assert ids == [1, 2, 3, 4, 5]
    assert [e.id for e in outbox.due("a", 1000.0)] == [1, 3, 4, 5]
    assert [e.id for e in outbox.due("a", 1000.0, limit=2)] == [1, 3]
    assert outbox.mark_sending(3)
    assert outbox.mark_retry(3, 1060.0, "HTTP 503", 503)
    assert [e.id for e in outbox.due("a", 1000.0)] == [1, 4, 5]
    assert [e.id for e in outbox.due("a", 1060.0)] == [1, 3, 4, 5]
    assert outbox.next_due("a") == 1000.0 and outbox.next_due("nothing") is None


def test_states_change_by_compare_and_set(tmp_path: Path) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)
    entry_id = outbox.enqueue("s", alert())
    assert not outbox.mark_sent(entry_id)  # not being sent
    assert not outbox.mark_retry(entry_id, 0.0, "x")
    assert outbox.mark_sending(entry_id)
    assert not outbox.mark_sending(entry_id)  # one claim only
    clock.now = 1001.0
    assert outbox.mark_retry(entry_id, 1030.0, "HTTP 429", 429)
    entry = outbox.get(entry_id)
    assert entry is not None and entry.state is OutboxState.PENDING and entry.attempts == 1
    assert (entry.next_at, entry.last_error, entry.last_status, entry.updated) == (
        1030.0,
        "HTTP 429",
        429,
        1001.0,
    )
    assert outbox.mark_sending(entry_id)
    clock.now = 1031.0
    assert outbox.mark_sent(entry_id, 202)
    entry = outbox.get(entry_id)
    assert entry is not None and entry.state is OutboxState.SENT and entry.attempts == 2
    assert entry.sent_at == 1031.0 and entry.last_status == 202
    assert not outbox.mark_dead(entry_id, "too late")  # sent stays sent
    other = outbox.enqueue("s", alert(2))
    assert outbox.mark_dead(other, "retry horizon passed: HTTP 503", 503)  # straight from pending
    dead = outbox.get(other)
    assert dead is not None and dead.state is OutboxState.DEAD
    assert dead.last_error == "retry horizon passed: HTTP 503"
    assert not outbox.mark_sending(other)


def test_recover_puts_interrupted_sends_back(tmp_path: Path) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)
    a, b, c = (outbox.enqueue("s", alert(n)) for n in (1, 2, 3))
    outbox.mark_sending(a)
    outbox.mark_sending(b)
    outbox.mark_sent(b)
    outbox.close()
    clock.now = 2000.0
    restarted = Outbox(tmp_path / "vigil.db", clock=clock)
    assert restarted.recover() == 1
    entry = restarted.get(a)
    assert entry is not None and entry.state is OutboxState.PENDING and entry.next_at == 2000.0
    assert entry.attempts == 1  # the interrupted attempt counts
    assert [e.id for e in restarted.due("s", 2000.0)] == [a, c]
    assert restarted.recover() == 0


def test_stats_list_and_prune(tmp_path: Path) -> None:
    clock = Clock()
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)
    first = outbox.enqueue("pd", alert(1))
    clock.now = 1010.0
    ids = [outbox.enqueue("pd", alert(n)) for n in (2, 3, 4)] + [outbox.enqueue("teams", alert(5))]
    outbox.mark_sending(first)
    outbox.mark_sending(ids[0])
    outbox.mark_sent(ids[0])
    outbox.mark_dead(ids[1], "HTTP 400: bad", 400)
    stats = outbox.stats()
    assert stats["pd"] == {"pending": 1, "sending": 1, "sent": 1, "dead": 1, "oldest_pending": 1000.0}
    assert stats["teams"] == {"pending": 1, "sending": 0, "sent": 0, "dead": 0, "oldest_pending": 1010.0}
    assert outbox.stats("teams") == {"teams": stats["teams"]}
    assert [e.id for e in outbox.list()] == [5, 4, 3, 2, 1]
    assert [e.id for e in outbox.list(sink="pd", state="dead")] == [ids[1]]
    assert [e.id for e in outbox.list(state=OutboxState.PENDING, limit=1)] == [ids[3]]
    doc = outbox.list(state="dead")[0].to_json()
    assert doc["state"] == "dead" and doc["last_status"] == 400 and doc["alert"]["title"] == "alert 3"
    with pytest.raises(ValueError):
        outbox.list(state="lost")
    clock.now = 5000.0
    assert outbox.prune(older_than=1010.0) == 0  # sent at 1010: not older
    assert outbox.prune(older_than=1011.0) == 1
    assert outbox.get(ids[0]) is None and outbox.get(ids[1]) is not None  # dead letters are kept


def test_secrets_are_redacted_before_anything_is_written(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "vigil.db")
    secret = alert(
        1,
        summary=f"blob read with https://a.blob.core.windows.net/c/b?sv=2022-11-02&sig={CANARY}",
        details={"headers": {"Authorization": f"Bearer {CANARY}"}, "client_secret": CANARY, "ok": "kept"},
        group={"conn": f"Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey={CANARY}"},
    )
    entry_id = outbox.enqueue("s", secret)
    outbox.mark_sending(entry_id)
    outbox.mark_retry(entry_id, 0.0, f"HTTP 500 while posting token={CANARY} " + "x" * 2000)
    outbox.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("vigil.db"))
    assert CANARY.encode() not in data and b"kept" in data
    entry = Outbox(tmp_path / "vigil.db").get(entry_id)
    assert entry is not None
    assert entry.alert.details["ok"] == "kept" and entry.alert.dedup_key == secret.dedup_key
    assert "sv=2022-11-02&sig=[REDACTED]" in entry.alert.summary
    assert len(entry.last_error) == MAX_ERROR and CANARY not in entry.last_error


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Outbox(tmp_path / "vigil.db").close()
    db = sqlite3.connect(tmp_path / "vigil.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'outbox_schema'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="outbox schema 99 is newer"):
        Outbox(tmp_path / "vigil.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="cannot open the outbox"):
        Outbox(tmp_path / "dir.db")
    assert repr(Outbox(tmp_path / "other.db")) == f"Outbox({str(tmp_path / 'other.db')!r})"

"""The action store: idempotent creation, compare-and-set transitions, progress, the timeline, windows."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from vigil.response.model import Action, ActionState, idempotency_key
from vigil.response.store import ActionConflictError, ActionNotFoundError, ActionStore
from vigil.store.sqlite import Store, StoreError

S = ActionState


def action(
    n: int = 1,
    *,
    target: str = "data-1",
    rule: str = "r.exfil",
    state: S = S.APPROVED,
    created: float = 1000.0,
    **kw: Any,
) -> Action:
    fields: dict[str, Any] = {
        "id": f"a{n}",
        "idem_key": idempotency_key(rule, target, "lock_storage", 0),
        "rule": rule,
        "rule_author": "carol",
        "finding_id": f"f{n}",
        "incident_id": "inc-1",
        "remediation": "lock_storage",
        "target": target,
        "params": {"lock": "read_only"},
        "approval": "auto",
        "dry_run": False,
        "state": state,
        "created": created,
        "updated": created,
    }
    fields.update(kw)
    return Action(**fields)


class Clock:
    def __init__(self) -> None:
        self.now = 2000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ActionStore]:
    s = ActionStore(tmp_path / "vigil.db", clock=Clock())
    yield s
    s.close()


def test_create_is_idempotent_by_key(store: ActionStore) -> None:
    first, created = store.create(action(1))
    assert created and first == action(1)
    again, created = store.create(action(2, finding_id="f-other"))  # same key, another id and finding
    assert not created and again == first
    assert [a.id for a in store.list()] == ["a1"]
    assert [h["message"] for h in store.history("a1")] == ["created"]


def test_create_refuses_a_reused_id_and_a_non_initial_state(store: ActionStore) -> None:
    store.create(action(1))
    with pytest.raises(ActionConflictError, match="a1 is approved"):
        store.create(action(1, target="other"))  # another key, same id
    with pytest.raises(ValueError, match="not running"):
        store.create(action(3, target="x", state=S.RUNNING))


def test_concurrent_creates_with_one_key_store_one_row(tmp_path: Path) -> None:
    """Two connections (as two daemons or two engine tasks would have) race on 20 keys."""
    stores = [ActionStore(tmp_path / "vigil.db") for _ in range(2)]
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(2)

    def racer(i: int) -> None:
        for k in range(20):
            barrier.wait()
            stored, created = stores[i].create(action(100 * i + k, target=f"t{k}"))
            results.append((stored.id, created))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created for _, created in results) == 20
    for k in range(20):  # both racers got the one stored action of key k
        ids = {aid for aid, _ in results if aid in (f"a{k}", f"a{100 + k}")}
        assert len(ids) == 1
    assert len(stores[0].list(limit=1000)) == 20
    for s in stores:
        s.close()


def test_transition_is_compare_and_set(store: ActionStore) -> None:
    store.create(action(1))
    running = store.transition("a1", {S.APPROVED}, S.RUNNING, actor="vigil", message="started")
    assert running.state is S.RUNNING and running.updated > running.created
    with pytest.raises(ActionConflictError, match="a1 is running: cannot go to running") as err:
        store.transition("a1", {S.APPROVED}, S.RUNNING, actor="vigil")
    assert err.value.current is S.RUNNING
    with pytest.raises(ActionNotFoundError):
        store.transition("nope", {S.APPROVED}, S.RUNNING, actor="vigil")
    with pytest.raises(ValueError, match="no transition to running"):
        store.transition("a1", {S.SUCCEEDED}, S.RUNNING, actor="vigil")  # not an edge of the diagram
    with pytest.raises(ValueError, match="cannot set"):
        store.transition("a1", {S.RUNNING}, S.RUNNING, actor="vigil", state="succeeded")
    assert store.get("a1") == running  # nothing changed by the refusals


def test_racing_transitions_have_one_winner(tmp_path: Path) -> None:
    ActionStore(tmp_path / "vigil.db").create(action(1))
    wins: list[str] = []
    conflicts: list[S] = []
    barrier = threading.Barrier(6)

    def racer(i: int) -> None:
        s = ActionStore(tmp_path / "vigil.db")
        barrier.wait()
        try:
            s.transition("a1", {S.APPROVED}, S.RUNNING, actor=f"worker-{i}")
            wins.append(f"worker-{i}")
        except ActionConflictError as exc:
            conflicts.append(exc.current)
        s.close()

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and conflicts == [S.RUNNING] * 5
    store = ActionStore(tmp_path / "vigil.db")
    assert [h["actor"] for h in store.history("a1")] == ["rule:r.exfil", wins[0]]
    store.close()


def test_fields_round_trip_and_are_logged(store: ActionStore) -> None:
    store.create(action(1, state=S.PENDING_APPROVAL, expires=5000.0))
    plan = {"remediation": "lock_storage", "steps": [{"name": "set_lock", "data": {"lock": "read_only"}}]}
    approved = store.transition(
        "a1",
        {S.PENDING_APPROVAL},
        S.APPROVED,
        actor="user:alice",
        message="approved",
        details={"note": "checked"},
        decided_by="alice",
        plan=plan,
        plan_digest="d" * 64,
    )
    assert approved.plan == plan and approved.plan_digest == "d" * 64 and approved.decided_by == "alice"
    last = store.history("a1")[-1]
    assert last["state"] == "approved" and last["actor"] == "user:alice" and last["message"] == "approved"
    assert last["details"] == {
        "from": "pending_approval",
        "decided_by": "alice",
        "plan_digest": "d" * 64,
        "note": "checked",
    }
    cleared = store.transition("a1", {S.APPROVED}, S.RUNNING, actor="vigil", plan=None, result={"a": [1]})
    assert cleared.plan is None and cleared.result == {"a": [1]} and cleared.plan_digest == "d" * 64


def test_progress_only_while_running_and_never_backwards(store: ActionStore) -> None:
    store.create(action(1))
    with pytest.raises(ActionConflictError, match="approved"):
        store.set_progress("a1", 1, {})
    store.transition("a1", {S.APPROVED}, S.RUNNING, actor="vigil")
    assert store.set_progress("a1", 1, {"steps": ["x"]}).progress == 1
    assert store.set_progress("a1", 1, {"steps": ["x"]}).progress == 1  # a redone step: same progress
    assert store.set_progress("a1", 2, {"steps": ["x", "y"]}).result == {"steps": ["x", "y"]}
    with pytest.raises(ActionConflictError):
        store.set_progress("a1", 1, {})
    with pytest.raises(ActionNotFoundError):
        store.set_progress("nope", 1, {})
    assert store.get("a1").progress == 2  # type: ignore[union-attr]
    assert [h["details"].get("progress") for h in store.history("a1")][-3:] == [1, 1, 2]


def test_log_and_history_are_the_timeline_oldest_first(store: ActionStore) -> None:
    store.create(action(1))
    store.log("a1", "vigil", "step 0 not run: audit unavailable", {"error": "audit disk full"})
    store.transition("a1", {S.APPROVED}, S.RUNNING, actor="vigil")
    history = store.history("a1")
    assert [h["message"] for h in history] == ["created", "step 0 not run: audit unavailable", "running"]
    assert [h["state"] for h in history] == ["approved", "approved", "running"]
    assert [h["seq"] for h in history] == sorted(h["seq"] for h in history)
    assert history[0]["details"] == {"finding": "f1", "target": "data-1", "reason": ""}
    with pytest.raises(ActionNotFoundError):
        store.log("nope", "vigil", "x")
    assert store.history("nope") == []


def test_list_filters_newest_first_and_by_states_oldest_first(store: ActionStore) -> None:
    for n, (state, rule, incident) in enumerate(
        [
            (S.APPROVED, "r.a", "i1"),
            (S.PENDING_APPROVAL, "r.a", "i2"),
            (S.APPROVED, "r.b", None),
            (S.REFUSED, "r.b", "i1"),
        ]
    ):
        store.create(action(n, target=f"t{n}", rule=rule, state=state, incident_id=incident, created=n))
    assert [a.id for a in store.list()] == ["a3", "a2", "a1", "a0"]
    assert [a.id for a in store.list(limit=2)] == ["a3", "a2"]
    assert [a.id for a in store.list(state=S.APPROVED)] == ["a2", "a0"]
    assert [a.id for a in store.list(rule="r.b", incident_id="i1")] == ["a3"]
    assert [a.id for a in store.list(incident_id="i1")] == ["a3", "a0"]
    assert [a.id for a in store.by_states([S.APPROVED, S.PENDING_APPROVAL])] == ["a0", "a1", "a2"]
    assert store.by_states([]) == [] and store.get("a9") is None


def test_windows_count_what_did_or_will_act(store: ActionStore) -> None:
    rows = [
        (S.APPROVED, 100.0, "t1"),
        (S.PENDING_APPROVAL, 101.0, "t2"),
        (S.REFUSED, 102.0, "t3"),
        (S.DRY_RUN, 103.0, "t4"),
        (S.APPROVED, 10.0, "t5"),
        (S.APPROVED, 104.0, "t1"),
    ]
    for n, (state, created, target) in enumerate(rows):
        store.create(action(n, target=target, state=state, created=created, idem_key=f"k{n}"))
    store.create(action(9, rule="r.other", target="t9", created=200.0))
    store.create(action(10, target="t10", created=105.0, remediation="quarantine_vm", idem_key="k10"))
    store.transition("a1", {S.PENDING_APPROVAL}, S.REJECTED, actor="user:alice")
    store.transition("a0", {S.APPROVED}, S.RUNNING, actor="vigil")
    store.transition("a0", {S.RUNNING}, S.FAILED, actor="vigil", reason="boom")  # failed still counts
    assert store.count_recent("r.exfil", 50.0) == 3  # a0, a5, a10: not refused, rejected, dry-run, old
    assert store.targets_recent("r.exfil", "lock_storage", 50.0) == {"t1"}
    assert store.targets_recent("r.exfil", "quarantine_vm", 50.0) == {"t10"}
    assert store.count_recent("r.other", 0.0) == 1


def test_shares_the_daemon_database_file_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "vigil.db"
    events = Store(path)
    actions = ActionStore(path)
    actions.create(action(1))
    events.close()
    actions.close()
    events, actions = Store(path), ActionStore(path)  # both schemas exist side by side, either order
    assert actions.get("a1") == action(1) and actions.history("a1")[0]["message"] == "created"
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"event_batches", "event_ids", "findings", "actions", "action_log"} <= tables
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert dict(conn.execute("SELECT key, value FROM meta")) == {"schema": "3", "actions_schema": "1"}
    conn.close()
    events.close()
    actions.close()


def test_unusable_database_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "vigil.db").mkdir()
    with pytest.raises(StoreError, match="cannot open the action store"):
        ActionStore(tmp_path / "vigil.db")
    newer = tmp_path / "newer.db"
    ActionStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'actions_schema'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        ActionStore(newer)


def test_a_failed_write_leaves_the_connection_usable(store: ActionStore) -> None:
    store.create(action(1))
    with pytest.raises(StoreError, match="write failed"):
        store.create(replace(action(2, target="x"), rule=None))  # type: ignore[arg-type]  # NOT NULL
    assert store.transition("a1", {S.APPROVED}, S.RUNNING, actor="vigil").state is S.RUNNING

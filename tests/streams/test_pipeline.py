"""The detect stage: the store's log through the detector, findings exactly once across restarts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import ev, poison, rule_doc, rules
from vigil.detectors.engine import Detector
from vigil.rules.model import Rule
from vigil.store.sqlite import Store, StoreError
from vigil.streams import pipeline
from vigil.streams.pipeline import DetectStage

BURST = rule_doc(
    "t.burst",
    'kind: generic\nmatch: action == "read"\nthreshold: {count: 3, window: 10m, group_by: [actor.ip]}\n',
)
EACH = rule_doc("t.each", 'kind: generic\nmatch: action == "delete"\n')


def _events(n: int, start: int = 0) -> list:
    out = []
    for i in range(start, start + n):
        action = "delete" if i % 10 == 0 else "read"
        out.append(ev(f"e{i}", i, action=action, ip=f"203.0.113.{i % 4}"))
    return out


def _stage(store: Store, ruleset: tuple[Rule, ...], **kw: object) -> DetectStage:
    stage = DetectStage(store, Detector(ruleset), **kw)  # type: ignore[arg-type]
    stage.recover()
    return stage


def _logged(tmp_path: Path, n: int) -> tuple[tuple[Rule, ...], Store, list, DetectStage]:
    """Rules, a store holding ``n`` events, and a stage over them (batches of 10, a snapshot each)."""
    ruleset = rules(tmp_path, BURST, EACH)
    store = Store(tmp_path / "vigil.db")
    events = _events(n)
    store.append_events(events, "test")
    return ruleset, store, events, _stage(store, ruleset, batch=10, snapshot_every=0.0)


def _reference(ruleset: tuple[Rule, ...], events: list) -> set[tuple[str, tuple[str, ...]]]:
    det = Detector(ruleset)
    return {(f.rule, f.event_ids) for e in events for f in det.process(e)}


def test_findings_from_the_log(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, BURST, EACH)
    store = Store(tmp_path / "vigil.db")
    events = _events(40)
    store.append_events(events, "test")
    stage = _stage(store, ruleset, batch=7)
    assert stage.drain() == 40
    stored = {(f["rule"], tuple(f["event_ids"])) for f in store.findings(limit=1000)}
    assert stored == _reference(ruleset, events)
    assert store.cursor() == 40 and stage.stats.new_findings == len(stored)


def test_restart_between_snapshot_and_cursor_gives_each_finding_once(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, BURST, EACH)
    events = _events(60)
    store = Store(tmp_path / "vigil.db")
    store.append_events(events[:30], "test")
    first = _stage(store, ruleset, batch=10, snapshot_every=0.0)
    first.step()  # events 1-10, snapshot at 10
    first.snapshot_every = 3600.0
    first.step()
    first.step()  # cursor 30, snapshot still at 10: a crash here re-processes 11-30
    assert store.snapshot() is not None and store.snapshot()[0] == 10  # type: ignore[index]
    del first
    store.append_events(events[30:], "test")
    second = _stage(store, ruleset, batch=10)
    assert second.position == 10
    second.drain()
    assert second.stats.replayed == 20
    stored = [(f["rule"], tuple(f["event_ids"])) for f in store.findings(limit=1000)]
    assert len(stored) == len(set(stored))  # nothing twice
    assert set(stored) == _reference(ruleset, events)  # nothing lost, windows continued across the restart


def test_run_processes_as_sources_append_and_snapshots_on_stop(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, BURST, EACH)
    store = Store(tmp_path / "vigil.db")
    stage = _stage(store, ruleset)

    async def main() -> None:
        wake, stopping = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(stage.run(wake, stopping, tick=0.05))
        for chunk in range(3):
            store.append_events(_events(10, chunk * 10), "test")
            wake.set()
            await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert store.cursor() == 30
    saved = store.snapshot()
    assert saved is not None and saved[0] == 30
    assert {(f["rule"], tuple(f["event_ids"])) for f in store.findings(limit=1000)} == _reference(
        ruleset, _events(30)
    )


def test_retention_prunes_detected_events_only(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, EACH)  # no stateful rule: the committed cursor is the safe point
    store = Store(tmp_path / "vigil.db")
    store.append_events(_events(20), "test")
    stage = DetectStage(store, Detector(ruleset), batch=10, snapshot_every=0.0, retention="1s")
    stage.recover()
    time.sleep(1.1)  # the events are now older than the retention
    stage.step()  # events 1-10 detected; those are pruned, 11-20 are not (not detected yet)
    assert [s.seq for s in store.read_events(0, 100)] == list(range(11, 21))
    stage.step()
    assert store.count_events() == 0 and stage.stats.pruned == 20
    assert len(store.findings(limit=100)) == 2  # findings stay


def test_incident_retention_runs_after_a_snapshot_at_its_own_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ruleset = rules(tmp_path, EACH)
    store = Store(tmp_path / "vigil.db")
    store.append_events(_events(20), "test")
    stage = DetectStage(store, Detector(ruleset), batch=10, snapshot_every=0.0, incident_retention="1s")
    stage.recover()
    stage.step()  # e0: a finding and its incident (and the first retention pass, with nothing due)
    (incident,) = store.incidents()
    store.set_incident_state(incident["id"], "resolved", "alice")
    time.sleep(1.1)  # the incident is now idle longer than its retention
    stage.step()  # e10: a new incident; the retention pass is not due yet (INCIDENT_PRUNE_EVERY)
    assert stage.stats.pruned_incidents == 0 and store.incident(incident["id"]) is not None
    monkeypatch.setattr(pipeline, "INCIDENT_PRUNE_EVERY", 0.0)
    store.append_events(_events(10, start=20), "test")
    stage.step()  # e20 joins the open incident of e10; the resolved one goes, with its finding
    assert (stage.stats.pruned_incidents, stage.stats.pruned_findings) == (1, 1)
    assert store.incident(incident["id"]) is None
    assert [i["findings"] for i in store.incidents()] == [2] and store.count_findings() == 2


def test_a_failed_commit_rebuilds_the_state_and_counts_nothing_twice(tmp_path: Path) -> None:
    ruleset, store, events, stage = _logged(tmp_path, 40)
    real = store.commit_detection
    calls = [0]

    def flaky(*args: object, **kw: object) -> int:
        calls[0] += 1
        if calls[0] == 3:  # the third batch cannot be committed (disk full, say)
            raise StoreError("database or disk is full")
        return real(*args, **kw)  # type: ignore[arg-type]

    store.commit_detection = flaky  # type: ignore[method-assign]
    stage.step()
    stage.step()
    with pytest.raises(StoreError):
        stage.step()
    stage.recover()  # what run() does after a failed commit
    stage.drain()
    stored = [(f["rule"], tuple(f["event_ids"])) for f in store.findings(limit=1000)]
    assert len(stored) == len(set(stored))
    assert set(stored) == _reference(ruleset, events)


def test_offered_events_the_stage_already_read_are_not_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    stage = _stage(store, rules(tmp_path, EACH))
    events = _events(5)
    seqs = store.accept(events, (), "test")
    stage.drain()  # read from the store before the source handed them over
    stage.offer(seqs, events)
    assert stage._handed == {}


def test_a_snapshot_asked_for_while_a_commit_runs_is_taken_next(tmp_path: Path) -> None:
    """The loop keeps serving while a batch commits in a worker thread (``run``); a hot reload in that time
    asks for a snapshot of the new rules, and the commit of the batch before it must not swallow that
    request."""
    ruleset = rules(tmp_path, BURST, EACH)
    store = Store(tmp_path / "vigil.db")
    store.append_events(_events(20), "test")
    stage = _stage(store, ruleset, batch=10, snapshot_every=3600.0)
    stage.force_snapshot = True

    real = store.commit_detection

    def commit_during_a_reload(*args: object, **kw: object) -> int:
        stage.force_snapshot = True  # (what Reloader does, on the loop, while a commit runs in its thread)
        return real(*args, **kw)  # type: ignore[arg-type]

    store.commit_detection = commit_during_a_reload  # type: ignore[method-assign]
    assert stage.step() == 10
    store.commit_detection = real  # type: ignore[method-assign]
    assert stage.stats.snapshots == 1 and stage.force_snapshot
    assert stage.step() == 10
    assert stage.stats.snapshots == 2 and not stage.force_snapshot
    assert store.snapshot() is not None and store.snapshot()[0] == 20  # type: ignore[index]


def test_run_detects_the_next_batch_while_one_commits_and_survives_a_failed_commit(tmp_path: Path) -> None:
    """``run`` pipelines: full batches are detected while the previous one commits (the detector reads
    ahead of the committed position); when a commit fails, the batch detected meanwhile is dropped with
    the rest of the state and rebuilt from the store: every finding is stored exactly once."""
    ruleset, store, events, stage = _logged(tmp_path, 60)
    real = store.commit_detection
    seen: list[tuple[int, int]] = []  # (the batch's cursor, the detector's read position) at each commit

    def flaky(*args: object, **kw: object) -> int:
        time.sleep(0.25)  # (a slow commit: the loop is free meanwhile, long enough on a busy CI machine)
        seen.append((int(args[1]), stage.read_to))  # type: ignore[call-overload]
        if len(seen) == 3:
            raise StoreError("database or disk is full")
        return real(*args, **kw)  # type: ignore[arg-type]

    store.commit_detection = flaky  # type: ignore[method-assign]

    async def main() -> None:
        wake, stopping = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(stage.run(wake, stopping, tick=0.05))
        deadline = time.monotonic() + 20
        while store.cursor() < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stopping.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert stage.stats.commit_failures == 1 and store.cursor() == 60
    assert all(read > cursor for cursor, read in seen[:4])  # the next batch was detected meanwhile
    stored = [(f["rule"], tuple(f["event_ids"])) for f in store.findings(limit=1000)]
    assert len(stored) == len(set(stored)) and set(stored) == _reference(ruleset, events)


def test_events_appended_while_a_batch_commits_are_detected_without_waiting_for_a_tick(
    tmp_path: Path,
) -> None:
    """A source that appends (and wakes the stage) while the stage awaits a commit must not have its wake-up
    cleared afterwards: the stage would sleep a whole tick (here 30 s) with those events waiting."""
    _, store, _, stage = _logged(tmp_path, 5)
    real = store.commit_detection
    committing = []

    def slow(*args: object, **kw: object) -> int:
        committing.append(True)
        time.sleep(0.3)  # (outside the store's lock: the source below can append meanwhile)
        return real(*args, **kw)  # type: ignore[arg-type]

    store.commit_detection = slow  # type: ignore[method-assign]

    async def main() -> float:
        wake, stopping = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(stage.run(wake, stopping, tick=30.0))
        while not committing:
            await asyncio.sleep(0.01)
        store.append_events(_events(5, start=5), "test")  # a source appends during the commit ...
        wake.set()  # ... and wakes the stage
        appended = time.monotonic()
        while store.cursor() < 10 and time.monotonic() - appended < 10:
            await asyncio.sleep(0.02)
        took = time.monotonic() - appended
        stopping.set()
        await asyncio.wait_for(task, 10)
        return took

    took = asyncio.run(main())
    assert store.cursor() == 10 and took < 5, took


def test_an_event_detection_raises_on_is_dead_lettered_once_and_the_stream_goes_on(tmp_path: Path) -> None:
    """Reliability A11: a poison event (here a bug in the engine that shows on one event) is dead-lettered
    with its reason and the canonical event, the others are processed, and processing it again after a
    restart stores the letter once (its identity leaves out the time)."""
    ruleset, store, events, stage = _logged(tmp_path, 40)

    def poisoned(stage: DetectStage) -> DetectStage:
        poison(stage.detector, "e13")
        return stage

    assert poisoned(stage).drain() == 40
    letters = store.dead_letters()
    assert len(letters) == 1 and stage.stats.dead_letters == 1
    assert letters[0]["source"] == "detector" and letters[0]["index"] == "seq 14"
    assert letters[0]["reason"] == "detection failed: ZeroDivisionError: a bug"
    assert letters[0]["record"]["id"] == "e13" and letters[0]["record"]["action"] == "read"
    stored = {(f["rule"], tuple(f["event_ids"])) for f in store.findings(limit=1000)}
    others = [e for e in events if e.id != "e13"]
    assert stored == _reference(ruleset, others) and store.cursor() == 40
    # processing the log again (as after a restart from an older snapshot) meets it again: still one letter
    again = _stage(store, ruleset, batch=10)
    again.read_to = 0
    assert poisoned(again).drain() == 40
    assert len(store.dead_letters()) == 1

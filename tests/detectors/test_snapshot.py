"""Snapshots: open windows, sequences and flatlines survive a restart; changed rules start empty and are
reported; a corrupt snapshot is a VigilError; writes are atomic."""

from __future__ import annotations

import base64
import os
import struct
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from tests.detectors.stateful_helpers import ev, feed, load, rule_doc
from vigil.detectors import snapshot
from vigil.detectors.engine import Detector
from vigil.detectors.finding import Finding
from vigil.errors import VigilError
from vigil.events.model import Event
from vigil.rules.model import Rule

SEQ = rule_doc(
    "t.seq",
    """\
kind: generic
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - match: action == "a"
    - match: action == "b"
    - match: action == "c"
""",
)
ABSENT = rule_doc(
    "t.absent",
    """\
kind: attestation
sequence:
  by: [node.id]
  within: 10m
  steps:
    - match: outcome == "failure"
    - match: outcome == "success"
      absent: true
""",
)
FLAT = rule_doc(
    "t.flat", 'kind: node.telemetry\nmatch: action == "hb"\nflatline: {period: 5m, group_by: [node.id]}\n'
)
DISTINCT = rule_doc(
    "t.distinct",
    'kind: generic\nmatch: action == "a"\n'
    "threshold: {distinct: actor.ip, at_least: 3, window: 10m, group_by: [labels.user]}\n",
)
SUM = rule_doc(
    "t.sum",
    'kind: generic\nmatch: action == "b"\nthreshold: {sum: raw.n, at_least: 100, window: 10m, group_by: [labels.user]}\n',
)
COUNT = rule_doc(
    "t.count",
    'kind: generic\nmatch: action == "c"\nthreshold: {count: 3, window: 10m, group_by: [actor.ip]}\n',
)
AT_MOST = rule_doc(
    "t.quiet",
    'kind: node.telemetry\nmatch: action == "hb"\n'
    "threshold: {count: true, at_most: 2, window: 10m, group_by: [node.id]}\n",
)
SUPPRESSED = rule_doc("t.one", 'kind: generic\nmatch: action == "a"\nsuppress: 1h\n')

FORMS_WITHOUT_INT_OVERFLOW = (SEQ, ABSENT, FLAT, DISTINCT, SUM)


def stream() -> list[Event]:
    """Events over 20 minutes (slightly out of order) that leave partials, windows and flatline timers open
    at every point; nodes n2 and n3 go silent halfway."""
    out: list[Event] = []
    for i in range(20):
        s = i * 60
        ip = f"10.0.0.{i % 3}"
        user = {"user": f"u{i % 2}"}
        node = f"n{i % 4}" if i < 8 else f"n{i % 2}"
        outcome = "success" if i % 3 == 2 else "failure"
        out += [
            ev(f"a{i}", s, action="a", ip=ip, labels=user),
            ev(f"b{i}", s + 50, action="b", ip=ip, labels=user, raw={"n": 30 + i}),
            ev(f"c{i}", s + 120, action="c", ip=ip),
            ev(f"h{i}", s + 10, kind="node.telemetry", action="hb", node=node),
            ev(f"t{i}", s + 20, kind="attestation", action="attest", outcome=outcome, node=node),
        ]
    return out


def run(rules: tuple[Rule, ...], events: list[Event]) -> tuple[Detector, list[Finding]]:
    det = Detector(rules, lateness=timedelta(minutes=2))
    found = feed(det, events)
    return det, found


def split_run(rules: tuple[Rule, ...], events: list[Event], k: int, path: Path) -> list[Finding]:
    first, found = run(rules, events[:k])
    snapshot.save(first, path)
    second = Detector(rules, lateness=timedelta(minutes=2))
    report = snapshot.load(second, path)
    assert report is not None and report.dropped == []
    found += feed(second, events[k:])
    return found + second.advance(timedelta(hours=1))


def uninterrupted(rules: tuple[Rule, ...], events: list[Event]) -> list[Finding]:
    det, found = run(rules, events)
    return found + det.advance(timedelta(hours=1))


def test_round_trip_continues_like_an_uninterrupted_run(tmp_path: Path) -> None:
    rules = load(tmp_path, *FORMS_WITHOUT_INT_OVERFLOW).rules
    events = stream()
    expected = uninterrupted(rules, events)
    assert {f.rule for f in expected} == {"t.seq", "t.absent", "t.flat", "t.distinct", "t.sum"}
    for k in range(0, len(events) + 1, 3):
        assert split_run(rules, events, k, tmp_path / "snap.json") == expected, k


def test_restore_report_and_state_contents(tmp_path: Path) -> None:
    rules = load(tmp_path, *FORMS_WITHOUT_INT_OVERFLOW).rules
    first, _ = run(rules, stream()[:23])
    data = snapshot.snapshot(first)
    doc = orjson.loads(data)
    assert doc["version"] == snapshot.VERSION
    assert doc["clock"] == first.clock.state()
    second = Detector(rules, lateness=timedelta(minutes=2))
    report = snapshot.restore(second, data)
    saved = {name: state for name, (_, state) in first.states().items() if state.size}
    assert report.rules == len(saved) and report.keys == sum(s.size for s in saved.values())
    assert report.dropped == []
    for name, (_, state) in second.states().items():
        assert dict(state.items()) == dict(first.states()[name][1].items()), name
        assert state.size == first.states()[name][1].size
    assert second.clock.state() == first.clock.state()
    # the restored watermark still makes an old event late
    second.process(ev("old", 0, action="zzz"))
    assert second.clock.late == 1


def test_round_trip_count_threshold(tmp_path: Path) -> None:
    rules = load(tmp_path, COUNT, AT_MOST).rules
    events = stream()
    expected = uninterrupted(rules, events)
    assert {f.rule for f in expected} == {"t.count", "t.quiet"}
    for k in range(0, len(events) + 1, 3):
        assert split_run(rules, events, k, tmp_path / "snap.json") == expected, k


def _as_version_1(data: bytes) -> bytes:
    """A version-2 snapshot as version 1 wrote it: ``distinct`` states laid out header + current + previous."""
    doc = orjson.loads(data)
    doc["version"] = 1
    for entry in doc["states"].get("t.distinct", {}).get("entries", []):
        st = base64.b64decode(entry[2])
        kb, nprev, only = struct.unpack_from("<qII", st)
        prev, cur = st[16 : 16 + 8 * nprev], st[16 + 8 * nprev :]
        entry[2] = base64.b64encode(struct.pack("<qII", kb, len(cur) // 8, only) + cur + prev).decode()
    return orjson.dumps(doc)


def test_a_version_1_snapshot_is_read_and_its_distinct_states_converted(tmp_path: Path) -> None:
    rules = load(tmp_path, *FORMS_WITHOUT_INT_OVERFLOW, SUPPRESSED).rules
    events = stream()
    expected = uninterrupted(rules, events)
    converted = 0
    for k in range(3, len(events) + 1, 6):
        first, found = run(rules, events[:k])
        old = _as_version_1(snapshot.snapshot(first))
        second = Detector(rules, lateness=timedelta(minutes=2))
        report = snapshot.restore(second, old)
        assert report.dropped == []
        for name, (_, state) in second.states().items():
            assert dict(state.items()) == dict(first.states()[name][1].items()), name
        converted += second.states()["t.distinct"][1].size
        found += feed(second, events[k:])
        assert found + second.advance(timedelta(hours=1)) == expected, k
    assert converted  # distinct states were there to convert


def test_round_trip_suppression(tmp_path: Path) -> None:
    rules = load(tmp_path, SUPPRESSED).rules
    events = stream()
    expected = uninterrupted(rules, events)
    assert [f.event_ids for f in expected] == [("a0",)]
    for k in range(1, len(events) + 1, 3):
        assert split_run(rules, events, k, tmp_path / "snap.json") == expected, k


def test_changed_rule_is_dropped_and_reported(tmp_path: Path) -> None:
    old = load(tmp_path, SEQ, FLAT, name="old.yaml").rules
    first, _ = run(old, stream()[:6])
    assert first.states()["t.seq"][1].size > 0 and first.states()["t.flat"][1].size > 0
    data = snapshot.snapshot(first)
    changed_seq = SEQ.replace("within: 10m", "within: 20m")
    new = load(tmp_path, changed_seq, FLAT, DISTINCT, name="new.yaml").rules
    second = Detector(new, lateness=timedelta(minutes=2))
    report = snapshot.restore(second, data)
    assert report.dropped == ["t.seq"]
    assert report.rules == 1 and report.keys == first.states()["t.flat"][1].size
    assert second.states()["t.seq"][1].size == 0
    assert second.states()["t.flat"][1].size > 0
    # a rule that is no longer loaded is dropped too
    third = Detector(load(tmp_path, FLAT, name="only.yaml").rules)
    assert snapshot.restore(third, data).dropped == ["t.seq"]
    # a title change is a text change
    retitled = Detector(
        load(tmp_path, SEQ, FLAT.replace("title: t.flat", "title: silent"), name="t.yaml").rules
    )
    assert snapshot.restore(retitled, data).dropped == ["t.flat"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b'{"version": 1, "states": {',
        b"[1, 2]",
        b'{"version": 99, "states": {}}',
        b'{"states": {}}',
    ],
    ids=["empty", "garbage", "truncated", "not-an-object", "other-version", "no-version"],
)
def test_undecodable_snapshot_is_a_vigil_error(tmp_path: Path, data: bytes) -> None:
    det = Detector(load(tmp_path, FLAT).rules)
    with pytest.raises(VigilError, match="snapshot"):
        snapshot.restore(det, data)
    path = tmp_path / "snap.json"
    path.write_bytes(data)
    with pytest.raises(VigilError):
        snapshot.load(det, path)


def _structurally_corrupt(rule: Rule) -> dict[str, bytes]:
    h = rule.content_hash
    entries = lambda e: orjson.dumps({"version": 1, "states": {rule.id: {"hash": h, "entries": e}}})  # noqa: E731
    return {
        "bad-tag": entries([["n1", "q", 1]]),
        "short-entry": entries([["n1"]]),
        "states-not-object": orjson.dumps({"version": 1, "states": [1]}),
        "bad-clock": orjson.dumps({"version": 1, "clock": {"watermark": "soon"}}),
    }


@pytest.mark.parametrize("case", ["bad-tag", "short-entry", "states-not-object", "bad-clock"])
def test_structurally_corrupt_snapshot_is_a_vigil_error(tmp_path: Path, case: str) -> None:
    rules = load(tmp_path, FLAT).rules
    det = Detector(rules)
    with pytest.raises(VigilError):
        snapshot.restore(det, _structurally_corrupt(rules[0])[case])


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    rules = load(tmp_path, *FORMS_WITHOUT_INT_OVERFLOW).rules
    det, _ = run(rules, stream()[:20])
    target = tmp_path / "state" / "detector.json"
    snapshot.save(det, target)  # creates the folder
    assert sorted(p.name for p in target.parent.iterdir()) == ["detector.json"]
    first = target.read_bytes()
    assert first == snapshot.snapshot(det)
    feed(det, stream()[20:30])
    snapshot.save(det, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["detector.json"]
    assert target.read_bytes() != first


def test_failed_save_keeps_the_previous_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = load(tmp_path, *FORMS_WITHOUT_INT_OVERFLOW).rules
    det, _ = run(rules, stream()[:20])
    target = tmp_path / "detector.json"
    snapshot.save(det, target)
    before = target.read_bytes()
    feed(det, stream()[20:30])

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        snapshot.save(det, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_load_without_a_snapshot_is_none(tmp_path: Path) -> None:
    det = Detector(load(tmp_path, FLAT).rules)
    assert snapshot.load(det, tmp_path / "missing.json") is None


def test_empty_detector_round_trip(tmp_path: Path) -> None:
    rules = load(tmp_path, *FORMS_WITHOUT_INT_OVERFLOW).rules
    det = Detector(rules)
    report = snapshot.restore(Detector(rules), snapshot.snapshot(det))
    assert (report.keys, report.rules, report.dropped) == (0, 0, [])

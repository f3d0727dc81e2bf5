"""Flatline rules: a group seen before goes silent for ``period`` -> one finding at last + period."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.detectors.stateful_helpers import BASE_MS, FakeTime, at, ev, feed, ms, rule_doc, rules
from vigil.detectors.clock import EventClock
from vigil.detectors.engine import Detector
from vigil.detectors.flatline import FlatlineDetector
from vigil.events.model import Event


def silent_rule(extra: str = "") -> str:
    return rule_doc(
        "t.silent",
        'kind: node.telemetry\nmatch: action == "node.train.step"\n'
        f"flatline: {{period: 10m, group_by: [node.id]{extra}}}\n",
    )


def detector(tmp_path: Path, *docs: str, lateness_min: float = 1, **kw: Any) -> Detector:
    return Detector(
        rules(tmp_path, *docs or (silent_rule(),)), lateness=timedelta(minutes=lateness_min), **kw
    )


def hb(eid: str, s: float, node: str, action: str = "node.train.step") -> Event:
    return ev(eid, s, kind="node.telemetry", action=action, node=node)


def fl(det: Detector) -> FlatlineDetector:
    return next(iter(det.flatlines.values()))


def test_silent_group_fires_once_at_last_plus_period(tmp_path: Path) -> None:
    det = detector(tmp_path)
    assert feed(det, [hb("a0", 0, "a"), hb("b0", 0, "b")]) == []
    # b keeps reporting every minute; the watermark trails it by 1 minute
    found = []
    fired_at = []
    for m in range(1, 31):
        out = det.process(hb(f"b{m}", m * 60, "b"))
        if out:
            fired_at.append(m)
        found += out
    assert fired_at == [12]  # the watermark is later than 10m (the due time) at b's event at 12m
    assert [(f.rule, f.form, dict(f.group), f.time, f.event_ids) for f in found] == [
        ("t.silent", "flatline", {"node.id": "a"}, at(600), ())
    ]
    assert f"{found[0].value}" == "None"


def test_group_fires_again_only_after_being_seen_again(tmp_path: Path) -> None:
    det = detector(tmp_path)
    det.process(hb("a0", 0, "a"))
    assert [f.time for f in det.advance(timedelta(minutes=10))] == [at(600)]
    assert det.advance(timedelta(hours=2)) == []
    # seen again at 3h: silent again from there
    t = 3 * 3600
    assert det.process(hb("a1", t, "a")) == []
    assert det.advance(timedelta(minutes=9)) == []
    assert [f.time for f in det.advance(timedelta(minutes=1))] == [at(t + 600)]


def test_regular_events_keep_the_group_quiet(tmp_path: Path) -> None:
    det = detector(tmp_path)
    assert feed(det, [hb(f"a{m}", m * 60 * 9, "a") for m in range(20)]) == []  # every 9 minutes


def test_exact_deadline(tmp_path: Path) -> None:
    det = detector(tmp_path, lateness_min=0)
    det.process(hb("a0", 0, "a"))
    assert det.process(hb("b0", 599.999, "b")) == []
    # an event of a at exactly 600 s would still be in time, so reaching 600 s is not yet silence
    assert det.process(hb("b1", 600, "b")) == []
    assert [dict(f.group) for f in det.process(hb("b2", 600.001, "b"))] == [{"node.id": "a"}]


def test_never_seen_group_never_fires(tmp_path: Path) -> None:
    det = detector(tmp_path)
    # events that do not match the rule create no group
    assert (
        feed(det, [hb("x", 0, "a", action="node.boot"), ev("y", 1, action="node.train.step", node="b")]) == []
    )
    assert det.advance(timedelta(days=2)) == []
    assert fl(det).state.size == 0


def test_out_of_order_event_does_not_move_last_seen_back(tmp_path: Path) -> None:
    det = detector(tmp_path, lateness_min=5)
    feed(det, [hb("a1", 300, "a"), hb("a0", 100, "a")])
    assert fl(det).state.get("a") == ms(300) << 1
    assert det.advance(timedelta(minutes=9, seconds=59)) == []
    assert [f.time for f in det.advance(timedelta(seconds=1))] == [at(900)]


def test_expire_forgets_groups(tmp_path: Path) -> None:
    det = detector(tmp_path, silent_rule(", expire: 30m"))
    flat = fl(det)
    assert flat.expire == 30 * 60_000
    # b's event moves the watermark to 24m: a fires (at 10m)
    assert [dict(f.group) for f in feed(det, [hb("a0", 0, "a"), hb("b0", 25 * 60, "b")])] == [
        {"node.id": "a"}
    ]
    assert [dict(f.group) for f in det.advance(timedelta(minutes=10))] == [{"node.id": "b"}]  # watermark 35m
    # ... and is 35 minutes old: past expire; b (10 minutes old) is kept
    assert flat.state.sweep_all(flat.dead(det.clock.watermark)) == 1
    assert flat.state.get("a") is None and flat.state.get("b") is not None
    assert flat.state.size == 1
    # a forgotten group is a never-seen group: nothing more, ever
    assert det.advance(timedelta(days=1)) == []


def test_default_expire(tmp_path: Path) -> None:
    det = detector(tmp_path)
    assert fl(det).expire == 24 * 3600 * 1000
    det2 = detector(
        tmp_path,
        rule_doc("t.slow", 'kind: generic\nmatch: action == "backup"\nflatline: {period: 6h}\n'),
    )
    assert fl(det2).expire == 60 * 3600 * 1000  # 10 periods when longer than a day


def test_no_group_by_is_one_group(tmp_path: Path) -> None:
    doc = rule_doc("t.any", 'kind: generic\nmatch: action == "backup"\nflatline: {period: 1h}\n')
    det = detector(tmp_path, doc)
    feed(det, [ev("b1", 0, action="backup", ip="a"), ev("b2", 600, action="backup", ip="b")])
    found = det.advance(timedelta(hours=1))
    assert [(dict(f.group), f.time) for f in found] == [({}, at(4200))]


def test_live_mode_fires_on_tick_without_events(tmp_path: Path) -> None:
    ft = FakeTime(BASE_MS / 1000)
    clock = EventClock(timedelta(minutes=1), live=True, wall=ft.wall, mono=ft.mono)
    det = Detector(rules(tmp_path, silent_rule()), clock=clock)
    det.process(hb("a0", 0, "a"))
    det.process(
        hb("b0", 120, "b")
    )  # clock skew between hosts: b reports "2 minutes ahead", within max_future
    ft.sleep(10 * 60)
    assert det.tick() == []  # watermark: now - 1m = 9m
    ft.sleep(60)
    assert det.tick() == []  # watermark 10m: exactly the due time, not past it
    ft.sleep(0.001)
    assert [(dict(f.group), f.time) for f in det.tick()] == [({"node.id": "a"}, at(600))]
    assert det.tick() == []
    ft.sleep(120)
    assert [(dict(f.group), f.time) for f in det.tick()] == [({"node.id": "b"}, at(720))]
    ft.sleep(3600)
    assert det.tick() == []


def test_replay_mode_tick_only_fires_what_events_made_due(tmp_path: Path) -> None:
    ft = FakeTime(BASE_MS / 1000 + 7200)
    det = Detector(
        rules(tmp_path, silent_rule()), clock=EventClock(timedelta(minutes=1), wall=ft.wall, mono=ft.mono)
    )
    det.process(hb("a0", 0, "a"))
    ft.sleep(3600)
    assert det.tick() == []  # replay: time comes from events only
    det.process(hb("b0", 700, "b"))
    assert [dict(f.group) for f in det.tick()] == []  # already fired during process
    assert fl(det).state.get("a") == (ms(0) << 1) | 1


def _flatline_groups(tmp_path: Path, order: list[str]) -> tuple[list[str], int]:
    det = detector(tmp_path, lateness_min=5)
    events = {"a0": hb("a0", 0, "a"), "a10": hb("a10", 600, "a"), "b15": hb("b15", 900, "b")}
    found = feed(det, [events[k] for k in order])
    return [dict(f.group)["node.id"] for f in found], det.clock.late


def test_event_at_the_deadline_keeps_the_group_alive_when_it_arrives_first(tmp_path: Path) -> None:
    assert _flatline_groups(tmp_path, ["a0", "a10", "b15"]) == ([], 0)


def test_event_at_the_deadline_does_not_depend_on_arrival_order(tmp_path: Path) -> None:
    assert _flatline_groups(tmp_path, ["a0", "b15", "a10"]) == ([], 0)

"""Event time: watermark and lateness, clamping of future and 1970 timestamps, immunity to wall-clock jumps."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import BASE_MS, FakeTime, at, ev, feed, ms, rule_doc, rules
from vigil.detectors.clock import FLOOR_MS, NEVER, EventClock, from_ms, to_ms
from vigil.detectors.engine import Detector

MIN = 60_000


def fake_clock(
    lateness_min: float = 5, *, live: bool = False, at_ms: int = BASE_MS
) -> tuple[EventClock, FakeTime]:
    ft = FakeTime(at_ms / 1000)
    clock = EventClock(timedelta(minutes=lateness_min), live=live, wall=ft.wall, mono=ft.mono)
    return clock, ft


def test_to_ms_and_from_ms_round_trip() -> None:
    assert to_ms(at(0)) == BASE_MS
    assert to_ms(at(1.5)) == BASE_MS + 1500
    assert from_ms(BASE_MS + 90_000) == at(90)


def test_watermark_is_newest_time_minus_lateness() -> None:
    clock, _ = fake_clock(5, at_ms=BASE_MS + 60 * MIN)
    assert clock.watermark == NEVER and clock.max_seen == NEVER
    t0 = BASE_MS
    assert clock.admit(t0) == t0
    assert clock.max_seen == t0 and clock.watermark == t0 - 5 * MIN
    # older than the newest, but within the lateness: used as is, watermark unchanged
    assert clock.admit(t0 - 4 * MIN) == t0 - 4 * MIN
    assert clock.watermark == t0 - 5 * MIN and clock.late == 0
    # exactly at the watermark is not late
    assert clock.admit(t0 - 5 * MIN) == t0 - 5 * MIN
    assert clock.late == 0
    # one millisecond older is late: counted and applied at the watermark
    assert clock.admit(t0 - 5 * MIN - 1) == t0 - 5 * MIN
    assert clock.late == 1
    # newer times move the watermark; it never moves back
    assert clock.admit(t0 + 2 * MIN) == t0 + 2 * MIN
    assert clock.watermark == t0 - 3 * MIN and clock.max_seen == t0 + 2 * MIN
    clock.admit(t0)
    assert clock.watermark == t0 - 3 * MIN and clock.max_seen == t0 + 2 * MIN
    assert clock.counters() == {"late": 1, "future_clamped": 0, "ancient_clamped": 0}


def test_zero_lateness_makes_every_older_event_late() -> None:
    clock, _ = fake_clock(0, at_ms=BASE_MS + 60 * MIN)
    clock.admit(BASE_MS)
    assert clock.watermark == BASE_MS
    assert clock.admit(BASE_MS) == BASE_MS and clock.late == 0
    assert clock.admit(BASE_MS - 1) == BASE_MS and clock.late == 1


def test_far_future_timestamp_is_clamped_to_now_and_counted() -> None:
    now = BASE_MS + 60 * MIN
    clock, ft = fake_clock(5, at_ms=now)
    # beyond max_future (10 minutes): clamped to now, so the watermark does not jump into the future
    assert clock.admit(now + 365 * 24 * 60 * MIN) == now
    assert clock.future == 1 and clock.late == 0
    assert clock.watermark == now - 5 * MIN
    # within max_future: trusted
    assert clock.admit(now + 9 * MIN) == now + 9 * MIN
    assert clock.future == 1
    assert clock.watermark == now + 4 * MIN
    # the horizon follows the monotonic clock: 5 minutes later, now + 14 minutes is acceptable
    ft.sleep(5 * 60)
    assert clock.admit(now + 14 * MIN) == now + 14 * MIN
    assert clock.future == 1
    # clamped to the new now (now + 5m), which is also behind the watermark (now + 9m): late as well
    assert clock.admit(now + 16 * MIN) == now + 9 * MIN
    assert clock.future == 2 and clock.late == 1


def test_1970_timestamp_is_clamped_and_counted() -> None:
    now = BASE_MS + 60 * MIN
    clock, _ = fake_clock(5, at_ms=now)
    # nothing seen yet: clamped to now
    assert clock.admit(0) == now
    assert clock.ancient == 1
    clock2, _ = fake_clock(5, at_ms=now)
    clock2.admit(BASE_MS)
    # after events: clamped to the newest time seen, so it is neither late nor moves the watermark
    assert clock2.admit(1000) == BASE_MS
    assert clock2.admit(FLOOR_MS - 1) == BASE_MS
    assert clock2.ancient == 2 and clock2.late == 0
    assert clock2.watermark == BASE_MS - 5 * MIN
    # the floor itself (2000-01-01) is trusted, and late here
    assert clock2.admit(FLOOR_MS) == BASE_MS - 5 * MIN
    assert clock2.ancient == 2 and clock2.late == 1


def test_advance_to_and_state_restore() -> None:
    clock, _ = fake_clock(5)
    clock.admit(BASE_MS)
    # complete *through* the given time: the watermark moves just past it
    assert clock.advance_to(BASE_MS + 10 * MIN) == BASE_MS + 10 * MIN + 1
    assert clock.max_seen == BASE_MS + 10 * MIN
    # advancing backwards changes nothing
    assert clock.advance_to(BASE_MS) == BASE_MS + 10 * MIN + 1
    other, _ = fake_clock(5)
    other.restore(clock.state())
    assert other.state() == {"max_seen": BASE_MS + 10 * MIN, "watermark": BASE_MS + 10 * MIN + 1}
    # restore never moves time backwards
    other.advance_to(BASE_MS + 60 * MIN)
    other.restore(clock.state())
    assert other.max_seen == BASE_MS + 60 * MIN


def test_replay_mode_watermark_follows_events_only() -> None:
    clock, ft = fake_clock(5, live=False)
    assert clock.tick() == NEVER
    ft.sleep(3600)
    assert clock.tick() == NEVER
    clock.admit(BASE_MS - 60 * MIN)
    ft.sleep(3600)
    assert clock.tick() == BASE_MS - 65 * MIN


def test_live_mode_watermark_follows_monotonic_now() -> None:
    clock, ft = fake_clock(5, live=True)
    assert clock.watermark == BASE_MS - 5 * MIN
    ft.sleep(60)
    assert clock.tick() == BASE_MS - 4 * MIN
    # a wall-clock jump moves neither now nor the watermark
    ft.jump_wall(-3600)
    assert clock.now_ms() == BASE_MS + MIN
    assert clock.tick() == BASE_MS - 4 * MIN
    ft.jump_wall(7200)
    assert clock.now_ms() == BASE_MS + MIN
    assert clock.tick() == BASE_MS - 4 * MIN


def test_detector_counts_clamped_and_late_events(tmp_path: Path) -> None:
    rs = rules(
        tmp_path,
        rule_doc("t.count", 'kind: generic\nmatch: action == "login"\nthreshold: {count: 100, window: 5m}\n'),
    )
    now = BASE_MS + 60 * MIN
    ft = FakeTime(now / 1000)
    clock = EventClock(timedelta(minutes=1), wall=ft.wall, mono=ft.mono)
    det = Detector(rs, clock=clock)
    assert det.clock is clock
    feed(det, [ev("a", 0), ev("old", 3600 * 24 * -365 * 60), ev("future", 3600 * 24 * 365 * 5)])
    assert det.stats()["ancient_clamped"] == 1
    assert det.stats()["future_clamped"] == 1
    # the future event was clamped to now (BASE + 60m): the watermark is now minus the lateness
    assert det.stats()["watermark_ms"] == now - MIN
    feed(det, [ev("late", 0)])
    stats = det.stats()
    assert stats["late"] == 1
    assert {k: stats[k] for k in ("late", "future_clamped", "ancient_clamped")} == {
        "late": 1,
        "future_clamped": 1,
        "ancient_clamped": 1,
    }


@pytest.mark.parametrize("jump_s", [-3600, 3600, -86_400 * 3])
def test_wall_clock_jump_does_not_move_flatline_timer(tmp_path: Path, jump_s: int) -> None:
    """NTP steps the wall clock while the monotonic clock runs on: the flatline still fires exactly
    ``period + lateness`` of monotonic time after the last event."""
    rs = rules(
        tmp_path,
        rule_doc(
            "t.silent",
            'kind: node.telemetry\nmatch: action == "node.train.step"\n'
            "flatline: {period: 10m, group_by: [node.id]}\n",
        ),
    )
    ft = FakeTime(BASE_MS / 1000)
    clock = EventClock(timedelta(minutes=1), live=True, wall=ft.wall, mono=ft.mono)
    det = Detector(rs, clock=clock)
    assert det.process(ev("hb", 0, kind="node.telemetry", action="node.train.step", node="n1")) == []
    ft.sleep(30)
    ft.jump_wall(jump_s)
    assert det.tick() == []
    # the watermark reaches BASE + 10m when monotonic now reaches BASE + 11m
    ft.sleep(10 * 60 + 29)  # monotonic now: BASE + 10m59s
    assert det.tick() == []
    ft.jump_wall(-jump_s / 2)
    ft.sleep(1.001)  # just past BASE + 11m: the watermark is later than the due time
    found = det.tick()
    assert [(f.rule, dict(f.group), f.time) for f in found] == [("t.silent", {"node.id": "n1"}, at(600))]
    assert det.tick() == []
    # an event stamped by a host whose clock jumped an hour ahead is clamped to (monotonic) now
    det.process(ev("skewed", at(11 * 60 + 3600), kind="node.telemetry", action="node.train.step", node="n2"))
    assert det.stats()["future_clamped"] == 1
    assert det.clock.max_seen == ms(11 * 60) + 1  # now: the 1 ms past the due time included

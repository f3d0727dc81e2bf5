"""Threshold rules: count, distinct and sum over the two-bucket sliding window, at_least crossings, at_most
buckets judged when they close, late and stale events; and property tests against brute force."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as observe
from hypothesis import strategies as st

from tests.detectors.stateful_helpers import BASE_MS, NATIVE_MODES, at, ev, feed, load, rule_doc, rules
from vigil.detectors.clock import from_ms, to_ms
from vigil.detectors.engine import Detector
from vigil.detectors.threshold import M24, ThresholdDetector, distinct_parts, value_hash
from vigil.events.model import Event
from vigil.rules.model import Rule

LOGIN = 'kind: generic\nmatch: action == "login"\n'


def count_rule(rule_id: str = "t.count", spec: str = "{count: 3, window: 5m, group_by: [actor.ip]}") -> str:
    return rule_doc(rule_id, LOGIN + f"threshold: {spec}\n")


def detector(tmp_path: Path, *docs: str, lateness_min: float = 5, **kw: Any) -> Detector:
    return Detector(rules(tmp_path, *docs), lateness=timedelta(minutes=lateness_min), **kw)


def th(det: Detector, rule_id: str) -> ThresholdDetector:
    return next(t for t in det.thresholds.values() if t.rule.id == rule_id)


def decode(value: object) -> tuple[int, int, int]:
    """(bucket, current count, previous count) of a packed count state."""
    assert type(value) is int
    return value >> 48, (value >> 24) & M24, value & M24


def login(eid: str, seconds: float | datetime, ip: str = "10.0.0.1", **kw: Any) -> Event:
    return ev(eid, seconds, ip=ip, **kw)


def bucket(seconds: float, window_s: float = 300) -> int:
    return to_ms(at(seconds)) // int(window_s * 1000)


# -- count, at_least --------------------------------------------------------------------------------------


def test_count_fires_once_on_crossing(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule())
    assert feed(det, [login("e1", 0), login("e2", 10)]) == []
    found = det.process(login("e3", 20))
    assert len(found) == 1
    f = found[0]
    assert f.rule == "t.count" and f.form == "threshold"
    assert f.event_ids == ("e3",) and f.time == at(20)
    assert dict(f.group) == {"actor.ip": "10.0.0.1"}
    assert f.value == 3.0 and f.suppressed == 0
    assert f.rule_hash == det.rules[0].content_hash
    # above the bound: no new crossing
    assert feed(det, [login(f"more{i}", 30 + i) for i in range(10)]) == []
    assert decode(th(det, "t.count").state.get("10.0.0.1")) == (bucket(0), 13, 0)


def test_count_below_bound_does_not_fire(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule())
    assert (
        feed(det, [login("e1", 0), login("e2", 100), ev("other", 110, action="logout", ip="10.0.0.1")]) == []
    )
    assert decode(th(det, "t.count").state.get("10.0.0.1")) == (bucket(0), 2, 0)


def test_group_by_separates_groups(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule())
    events = [login(f"e{i}", i, ip=("a" if i % 2 == 0 else "b")) for i in range(5)]  # a a a, b b
    found = feed(det, events)
    assert [(f.event_ids, dict(f.group)) for f in found] == [(("e4",), {"actor.ip": "a"})]
    assert feed(det, [login("b3", 10, ip="b")])[0].group == {"actor.ip": "b"}


def test_multi_field_group_by(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(spec="{count: 2, window: 5m, group_by: [actor.ip, labels.site]}"))
    found = feed(
        det,
        [
            login("x1", 0, ip="a", labels={"site": "x"}),
            login("y1", 1, ip="a", labels={"site": "y"}),
            login("bx", 2, ip="b", labels={"site": "x"}),
            login("x2", 3, ip="a", labels={"site": "x"}),
            login("n1", 4, ip="a"),  # no label: the "" value forms its own group
            login("n2", 5, ip="a"),
        ],
    )
    assert [(f.event_ids, dict(f.group)) for f in found] == [
        (("x2",), {"actor.ip": "a", "labels.site": "x"}),
        (("n2",), {"actor.ip": "a", "labels.site": ""}),
    ]


def test_no_group_by_is_one_group(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(spec="{count: 3, window: 5m}"))
    found = feed(det, [login("a", 0, ip="a"), login("b", 1, ip="b"), login("c", 2, ip=None)])
    assert [(f.event_ids, dict(f.group)) for f in found] == [(("c",), {})]


def test_only_matching_events_count(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule())
    found = feed(
        det,
        [
            login("e1", 0),
            ev("x", 1, action="logout", ip="10.0.0.1"),
            ev("y", 2, kind="azure.activity", action="login", ip="10.0.0.1"),
            login("e2", 3),
            login("e3", 4),
        ],
    )
    assert [f.event_ids for f in found] == [("e3",)]


# -- the window at bucket boundaries ----------------------------------------------------------------------


def test_event_exactly_window_apart_at_bucket_start_is_counted_whole(tmp_path: Path) -> None:
    """At the first instant of a bucket (f = 0) the previous bucket counts whole: the documented
    over-estimate of at most previous * (1 - f)."""
    det = detector(tmp_path, count_rule(spec="{count: 2, window: 5m, group_by: [actor.ip]}"))
    assert det.process(login("e1", 0)) == []
    found = det.process(login("e2", 300))  # exactly one window later, first instant of the next bucket
    assert [(f.event_ids, f.value) for f in found] == [(("e2",), 2.0)]
    assert decode(th(det, "t.count").state.get("10.0.0.1")) == (bucket(300), 1, 1)


def test_previous_bucket_decays_linearly(tmp_path: Path) -> None:
    # two events in bucket 0, then events 3/4 of the way through bucket 1: the previous bucket weighs 1/4
    det = detector(tmp_path, count_rule(spec="{count: 4, window: 5m, group_by: [actor.ip]}"))
    assert feed(det, [login("p1", 60), login("p2", 120)]) == []
    t = 300 + 225  # f = 0.75: estimate before = 2 * 0.25 = 0.5
    assert feed(det, [login("c1", t), login("c2", t), login("c3", t)]) == []  # 1.5, 2.5, 3.5
    found = det.process(login("c4", t))
    assert [(f.event_ids, f.value) for f in found] == [(("c4",), 4.5)]


def test_halfway_through_bucket(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(spec="{count: 4, window: 5m, group_by: [actor.ip]}"))
    feed(det, [login("p1", 60), login("p2", 120)])
    t = 300 + 150  # f = 0.5: 2 * 0.5 = 1, then 2, 3, 4
    found = feed(det, [login("c1", t), login("c2", t), login("c3", t)])
    assert [(f.event_ids, f.value) for f in found] == [(("c3",), 4.0)]


def test_last_instant_of_bucket_and_first_of_next(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(spec="{count: 3, window: 5m, group_by: [actor.ip]}"))
    assert feed(det, [login("a", 0), login("b", 299.999)]) == []
    state = th(det, "t.count").state
    assert decode(state.get("10.0.0.1")) == (bucket(0), 2, 0)
    found = det.process(login("c", 300))
    assert [f.event_ids for f in found] == [("c",)]
    assert decode(state.get("10.0.0.1")) == (bucket(300), 1, 2)


def test_a_gap_of_two_buckets_forgets_the_old_one(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(spec="{count: 2, window: 5m, group_by: [actor.ip]}"))
    assert feed(det, [login("a", 299), login("b", 600)]) == []  # bucket 0, then bucket 2
    assert decode(th(det, "t.count").state.get("10.0.0.1")) == (bucket(600), 1, 0)


def test_estimate_falls_below_and_crosses_again(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(spec="{count: 2, window: 5m, group_by: [actor.ip]}"))
    first = feed(det, [login("a", 0), login("b", 1)])
    assert [f.event_ids for f in first] == [("b",)]
    # in bucket 2 both earlier buckets are gone: a fresh crossing fires again
    again = feed(det, [login("c", 600), login("d", 601)])
    assert [f.event_ids for f in again] == [("d",)]


# -- out of order, late, stale ----------------------------------------------------------------------------


def test_out_of_order_within_lateness_counts(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule())
    found = feed(det, [login("e1", 120), login("e2", 60), login("e3", 30)])
    assert [f.event_ids for f in found] == [("e3",)]
    assert det.clock.late == 0


def test_out_of_order_into_previous_bucket_counts_whole(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule())
    assert feed(det, [login("e1", 310), login("e2", 290)]) == []
    state = th(det, "t.count").state
    assert decode(state.get("10.0.0.1")) == (bucket(310), 1, 1)
    found = det.process(login("e3", 280))
    assert [(f.event_ids, f.value) for f in found] == [(("e3",), 3.0)]
    assert decode(state.get("10.0.0.1")) == (bucket(310), 1, 2)
    assert det.clock.late == 0 and th(det, "t.count").stale == 0


def test_late_event_is_counted_at_the_watermark(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(spec="{count: 2, window: 5m, group_by: [actor.ip]}"), lateness_min=1)
    assert feed(det, [login("a1", 480, ip="a"), login("b1", 600, ip="b")]) == []  # watermark: 9m
    found = det.process(login("late", 60, ip="a"))  # 1m: older than the watermark
    assert det.clock.late == 1
    assert det.stats()["late"] == 1
    # applied at 9m: same bucket as a1 (5m..10m), so the group now has 2 and crosses
    assert [(f.event_ids, f.value, f.time) for f in found] == [(("late",), 2.0, at(60))]
    assert decode(th(det, "t.count").state.get("a")) == (bucket(300), 2, 0)


def test_late_event_rolls_the_bucket_when_watermark_is_in_a_later_one(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(), lateness_min=1)
    feed(det, [login("a1", 180, ip="a"), login("b1", 600, ip="b")])  # watermark 9m, bucket 1
    det.process(login("late", 120, ip="a"))  # clamped to 9m: bucket 1, after a's bucket 0
    assert det.clock.late == 1
    assert decode(th(det, "t.count").state.get("a")) == (bucket(540), 1, 1)


def test_event_older_than_both_buckets_is_stale(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule(), lateness_min=30)
    det.process(login("now", 20 * 60))  # bucket 4
    before = th(det, "t.count").state.get("10.0.0.1")
    assert det.process(login("old", 8 * 60)) == []  # bucket 1 < 4 - 1: within lateness, but stale
    assert det.clock.late == 0
    assert th(det, "t.count").stale == 1
    assert th(det, "t.count").state.get("10.0.0.1") == before
    assert det.stats()["rules"]["t.count"]["stale_events"] == 1  # type: ignore[index]
    # bucket 3 is the previous bucket: not stale
    det.process(login("prev", 15 * 60))
    assert th(det, "t.count").stale == 1
    assert decode(th(det, "t.count").state.get("10.0.0.1")) == (bucket(20 * 60), 1, 1)


# -- at_most: buckets judged whole ------------------------------------------------------------------------


AT_MOST = "{count: true, at_least: 2, at_most: 3, window: 5m, group_by: [actor.ip]}"


def test_at_most_judged_when_watermark_passes_bucket_end(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.range", AT_MOST), lateness_min=1)
    events = [
        login("a1", 10, ip="a"),
        login("a2", 20, ip="a"),  # a: 2 in [2, 3]
        *[login(f"c{i}", 30 + i, ip="c") for i in range(4)],  # c: 4, above at_most
        login("d1", 40, ip="d"),  # d: 1, below at_least
        login("e1", 50, ip="e"),
        login("e2", 51, ip="e"),
        login("e3", 52, ip="e"),  # e: 3, the upper bound itself
    ]
    assert feed(det, events) == []
    # watermark 5m59s - 1m = 4m59s: bucket 0 still open
    assert det.process(login("z1", 359, ip="z")) == []
    found = det.process(login("z2", 360, ip="z"))  # watermark 5m: bucket 0 closes
    assert sorted((dict(f.group)["actor.ip"], f.value, f.time, f.event_ids) for f in found) == [
        ("a", 2, at(300), ()),
        ("e", 3, at(300), ()),
    ]
    assert all(f.form == "threshold" and f.rule == "t.range" for f in found)
    # judged buckets are dropped; nothing fires twice
    assert th(det, "t.range").state.get("a") is None
    # z has 2 events in bucket 1 (5m..10m): judged when event time is declared complete past 10m
    found = det.advance(timedelta(minutes=10))
    assert [(dict(f.group), f.value, f.time) for f in found] == [({"actor.ip": "z"}, 2, at(600))]
    assert det.advance(timedelta(minutes=10)) == []


def test_at_most_bucket_of_z_closes_on_advance(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.range", AT_MOST), lateness_min=1)
    feed(det, [login("z1", 310, ip="z"), login("z2", 320, ip="z")])
    assert det.advance(timedelta(minutes=3)) == []  # watermark 8m20s: bucket 1 (5m..10m) still open
    found = det.advance(timedelta(minutes=2))  # cumulative: 10m20s
    assert [(dict(f.group), f.value, f.time) for f in found] == [({"actor.ip": "z"}, 2, at(600))]


def test_at_most_judged_when_group_moves_to_a_later_bucket(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.range", AT_MOST), lateness_min=10)
    assert feed(det, [login("a1", 10, ip="a"), login("a2", 20, ip="a")]) == []
    found = det.process(login("a3", 330, ip="a"))  # watermark is far behind; a's own event closes bucket 0
    assert [(f.value, f.time, f.event_ids) for f in found] == [(2, at(300), ())]
    assert decode(th(det, "t.range").state.get("a")) == (bucket(330), 1, 2)


def test_at_most_only_fires_for_quiet_but_not_silent_buckets(tmp_path: Path) -> None:
    det = detector(
        tmp_path, count_rule("t.quiet", "{count: true, at_most: 2, window: 5m, group_by: [node.id]}")
    )
    hb = lambda eid, s, n: ev(eid, s, action="login", node=n)  # noqa: E731
    feed(det, [hb("a1", 10, "a"), hb("b1", 11, "b"), hb("b2", 12, "b"), hb("b3", 13, "b")])
    found = det.advance(timedelta(minutes=10))
    assert [(dict(f.group), f.value) for f in found] == [({"node.id": "a"}, 1)]


def test_at_most_late_event_after_early_judgement_goes_to_next_bucket(tmp_path: Path) -> None:
    """The module docstring: 'an event arriving after its bucket was judged counts in the next one'."""
    det = detector(tmp_path, count_rule("t.range", AT_MOST), lateness_min=10)
    feed(det, [login("a1", 60, ip="a")])
    assert det.process(login("a2", 310, ip="a")) == []  # bucket 0 judged (1 event): below at_least
    assert det.process(login("a3", 180, ip="a")) == []  # bucket 0 again, after it was judged
    found = det.advance(timedelta(minutes=20))
    assert [(f.value, f.time) for f in found] == [(2, at(600))]


# -- distinct ---------------------------------------------------------------------------------------------


DISTINCT = "{distinct: actor.ip, at_least: 3, window: 5m, group_by: [actor.id]}"


def test_distinct_counts_each_value_once(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.ips", DISTINCT))
    u = lambda eid, s, ip, who="u1": login(eid, s, ip=ip, actor_id=who)  # noqa: E731
    assert feed(det, [u("1", 0, "ip1"), u("2", 1, "ip1"), u("3", 2, "ip2"), u("4", 3, "ip2")]) == []
    assert feed(det, [u("o", 4, "ip3", who="u2"), u("n", 5, None)]) == []  # other user; no value
    found = det.process(u("5", 6, "ip3"))
    assert [(f.event_ids, f.value, dict(f.group)) for f in found] == [(("5",), 3.0, {"actor.id": "u1"})]
    assert feed(det, [u("6", 7, "ip1"), u("7", 8, "ip4")]) == []


def test_distinct_values_in_previous_bucket_count_once(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.ips", DISTINCT))
    u = lambda eid, s, ip: login(eid, s, ip=ip, actor_id="u1")  # noqa: E731
    feed(det, [u("1", 200, "ip1"), u("2", 210, "ip2")])
    # at the first instant of bucket 1 the previous bucket counts whole; re-seeing ip1 adds nothing
    assert det.process(u("3", 300, "ip1")) == []
    assert det.process(u("4", 300, "ip2")) == []
    found = det.process(u("5", 300, "ip3"))
    assert [f.value for f in found] == [3.0]


def test_distinct_non_string_values(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.ports", "{distinct: raw.port, at_least: 3, window: 5m}"))
    p = lambda eid, s, port: login(eid, s, raw={"port": port})  # noqa: E731
    found = feed(det, [p("1", 0, 22), p("2", 1, 22), p("3", 2, 443), p("4", 3, 443), p("5", 4, 8080)])
    assert [(f.event_ids, f.value) for f in found] == [(("5",), 3.0)]
    # values are hashed by their text, like group keys: the number 22 and the string "22" are one value
    assert value_hash(22) == value_hash("22") != value_hash(22.5)
    det2 = detector(tmp_path, count_rule("t.ports", "{distinct: raw.port, at_least: 3, window: 5m}"))
    assert feed(det2, [p("1", 0, 22), p("2", 1, "22"), p("3", 2, 22.5)]) == []
    assert [f.event_ids for f in det2.process(p("4", 3, True))] == [("4",)]


# -- sum --------------------------------------------------------------------------------------------------


SUM = "{sum: raw.bytes, at_least: 1000, window: 5m, group_by: [actor.ip]}"


def test_sum_adds_numbers(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.bytes", SUM))
    b = lambda eid, s, n, ip="a": login(eid, s, ip=ip, raw={"bytes": n})  # noqa: E731
    assert feed(det, [b("1", 0, 400), b("2", 1, 300.5), b("o", 2, 900, ip="b")]) == []
    found = det.process(b("3", 3, 299.5))
    assert [(f.event_ids, f.value, dict(f.group)) for f in found] == [(("3",), 1000.0, {"actor.ip": "a"})]
    assert det.process(b("4", 4, 5)) == []


def test_sum_rejects_non_numbers(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.bytes", SUM))
    b = lambda eid, s, n: login(eid, s, raw={"bytes": n})  # noqa: E731
    bad = [b("s", 0, "5000"), b("t", 1, True), b("f", 2, False), b("l", 3, [5000]), b("nan", 4, float("nan"))]
    assert feed(det, [*bad, b("inf", 5, float("inf")), login("missing", 6)]) == []
    t = th(det, "t.bytes")
    assert t.bad_values == 6  # the missing field is not a bad value
    assert t.state.size == 0
    assert det.stats()["rules"]["t.bytes"]["bad_values"] == 6  # type: ignore[index]
    assert [f.value for f in feed(det, [b("ok", 7, 999), b("ok2", 8, 1)])] == [1000.0]


def test_sum_previous_bucket_decays(tmp_path: Path) -> None:
    det = detector(tmp_path, count_rule("t.bytes", SUM))
    b = lambda eid, s, n: login(eid, s, raw={"bytes": n})  # noqa: E731
    det.process(b("1", 100, 800))
    # f = 0.5 in bucket 1: 800 * 0.5 + 500 = 900 < 1000
    assert det.process(b("2", 450, 500)) == []
    found = det.process(b("3", 450, 100))
    assert [f.value for f in found] == [1000.0]


def test_sum_at_most_judges_closed_buckets(tmp_path: Path) -> None:
    spec = "{sum: raw.bytes, at_least: 10, at_most: 100, window: 5m, group_by: [actor.ip]}"
    det = detector(tmp_path, count_rule("t.bytes", spec), lateness_min=1)
    b = lambda eid, s, n, ip: login(eid, s, ip=ip, raw={"bytes": n})  # noqa: E731
    feed(
        det,
        [b("1", 0, 40, "a"), b("2", 1, 60, "a"), b("3", 2, 60, "b"), b("4", 3, 50, "b"), b("5", 4, 5, "c")],
    )
    found = det.advance(timedelta(minutes=10))
    assert [(dict(f.group), f.value) for f in found] == [({"actor.ip": "a"}, 100.0)]


def test_distinct_at_most_judges_closed_buckets(tmp_path: Path) -> None:
    spec = "{distinct: actor.ip, at_most: 2, window: 5m, group_by: [actor.id]}"
    det = detector(tmp_path, count_rule("t.ips", spec), lateness_min=1)
    u = lambda eid, s, ip, who: login(eid, s, ip=ip, actor_id=who)  # noqa: E731
    feed(det, [u("1", 0, "x", "a"), u("2", 1, "x", "a"), u("3", 2, "y", "a")])
    feed(det, [u("4", 3, "x", "b"), u("5", 4, "y", "b"), u("6", 5, "z", "b")])
    found = det.advance(timedelta(minutes=10))
    assert [(dict(f.group), f.value) for f in found] == [({"actor.id": "a"}, 2)]


# -- properties against brute force -----------------------------------------------------------------------

W_S = 60  # window of the property rules: 1 minute
W = W_S * 1000
LATENESS = 90_000  # 90 s: longer than the window, so events can also be stale
BOUNDS = (1, 2, 3, 5, 8)
GROUPS = ("g0", "g1", "g2")
#: a stream: (step forward ms, group index, ms behind the newest time or value index) per event
Steps = list[tuple[int, int, int]]


def property_docs() -> list[str]:
    docs = [
        rule_doc(f"p.count{n}", LOGIN + f"threshold: {{count: {n}, window: {W_S}s, group_by: [actor.ip]}}\n")
        for n in BOUNDS
    ]
    docs += [
        rule_doc(
            f"p.distinct{n}",
            LOGIN + f"threshold: {{distinct: raw.v, at_least: {n}, window: {W_S}s, group_by: [actor.ip]}}\n",
        )
        for n in BOUNDS
    ]
    return docs


@pytest.fixture(scope="module")
def property_rules(tmp_path_factory: pytest.TempPathFactory) -> tuple[Rule, ...]:
    return load(tmp_path_factory.mktemp("prop"), *property_docs()).rules


class CountModel:
    """Brute force over the admitted times of one group's events: the exact buckets, and the window."""

    def __init__(self) -> None:
        self.times: list[int] = []  # admitted times of the non-stale events
        self.kb: int | None = None

    def buckets(self) -> tuple[int, int, int]:
        """(newest bucket, events in it, events in the bucket before), counted one by one."""
        assert self.kb is not None
        kb = self.kb
        cur = sum(1 for t in self.times if t // W == kb)
        prev = sum(1 for t in self.times if t // W == kb - 1)
        return kb, cur, prev

    def estimate_before(self, t: int) -> float | None:
        """The documented estimate just before an event at ``t`` is counted (None: the event is stale)."""
        b = t // W
        if self.kb is None:
            return 0.0
        kb, cur, prev = self.buckets()
        if b > kb:
            prev = cur if b == kb + 1 else 0
            cur, kb = 0, b
        elif b < kb - 1:
            return None
        elif b == kb - 1:  # into the previous bucket: all of it is in the window
            return float(cur + prev)
        return cur + prev * (1 - (t - kb * W) / W) if prev else float(cur)

    def add(self, t: int) -> None:
        self.times.append(t)
        self.kb = t // W if self.kb is None else max(self.kb, t // W)

    def exact(self, t: int) -> int:
        """The exact sliding count over (t - W, t]."""
        return sum(1 for x in self.times if t - W < x <= t)


def check_count_stream(rules: tuple[Rule, ...], steps: Steps, native: bool) -> Counter[str]:
    """Run ``steps`` through a detector (plain count windows compiled or in Python) and check every event
    against the brute-force model; returns what the stream exercised."""
    seen: Counter[str] = Counter()
    det = Detector(rules, lateness=timedelta(milliseconds=LATENESS), native=native)
    counters = {n: th(det, f"p.count{n}") for n in BOUNDS}
    models = {n: {g: CountModel() for g in GROUPS} for n in BOUNDS}
    stale = dict.fromkeys(BOUNDS, 0)
    max_seen, watermark, late = -(1 << 62), -(1 << 62), 0
    newest = BASE_MS
    for i, (step, gi, behind) in enumerate(steps):
        newest += step
        g = GROUPS[gi]
        event = ev(f"e{i}", from_ms(newest - behind), ip=g)
        t_ms = to_ms(event.time)
        assert t_ms == newest - behind
        # the clock, by hand: a late event is applied at the watermark
        if t_ms < watermark:
            late += 1
            seen["late"] += 1
            t_ms = watermark
        if t_ms > max_seen:
            max_seen = t_ms
            watermark = max(watermark, t_ms - LATENESS)
        found = {f.rule: f for f in det.process(event)}
        for n in BOUNDS:
            model = models[n][g]
            in_order = all(x <= t_ms for x in model.times)
            before = model.estimate_before(t_ms)
            if before is None:
                stale[n] += 1
                seen["stale"] += 1
            else:
                model.add(t_ms)
            # findings fire exactly when the estimate crosses the bound
            fired = found.get(f"p.count{n}")
            should = before is not None and before < n <= before + 1
            assert (fired is not None) == should, (i, n, before)
            if fired is not None:
                seen[f"count fired (bound {n})"] += 1
                assert fired.value == pytest.approx(before + 1)  # type: ignore[operator]
                assert fired.event_ids == (event.id,) and dict(fired.group) == {"actor.ip": g}
            # the packed state is exactly the brute-force bucket counts
            kb, cur, prev = model.buckets()
            assert decode(counters[n].state.get(g)) == (kb, cur, prev), (i, n)
            # and the estimate is within the documented bound of the exact sliding count
            if in_order and t_ms // W == kb:
                f = (t_ms - kb * W) / W
                estimate = cur + prev * (1 - f)
                exact = model.exact(t_ms)
                assert cur <= exact <= cur + prev, (i, n)
                assert exact - prev * f - 1e-9 <= estimate <= exact + prev * (1 - f) + 1e-9, (i, n)
                if prev and cur < exact < cur + prev:
                    seen["window strictly inside the two-bucket range"] += 1
        assert det.clock.late == late and det.clock.watermark == watermark
    for n in BOUNDS:
        assert counters[n].stale == stale[n]
    return seen


def check_distinct_stream(rules: tuple[Rule, ...], steps: Steps, native: bool) -> Counter[str]:
    """In-order streams: per bucket the kept values are the first ``cap`` distinct ones, ``only`` the
    number of previous-bucket values not seen again in the current one; findings fire exactly on a
    crossing of the estimate ``len(cur) + only * (1 - f)``."""
    seen: Counter[str] = Counter()
    det = Detector(rules, lateness=timedelta(milliseconds=LATENESS), native=native)
    newest = BASE_MS
    events: dict[str, list[tuple[int, str]]] = {g: [] for g in GROUPS}
    for i, (step, gi, vi) in enumerate(steps):
        newest += step
        g, value = GROUPS[gi], f"v{vi}"
        event = ev(f"e{i}", from_ms(newest), ip=g, raw={"v": value})
        t = to_ms(event.time)
        found = {f.rule: f for f in det.process(event)}
        before_events = list(events[g])
        events[g].append((t, value))
        b = t // W
        for n in BOUNDS:
            d = th(det, f"p.distinct{n}")
            assert d.cap == n

            def kept(bk: int, evs: list[tuple[int, str]], cap: int = n) -> list[str]:
                out: list[str] = []
                for x, v in evs:
                    if x // W == bk and v not in out and len(out) < cap:
                        out.append(v)
                return out

            def estimate(evs: list[tuple[int, str]], kb: int = b, t: int = t) -> float:
                cur, prev = kept(kb, evs), kept(kb - 1, evs)
                only = len([v for v in prev if v not in cur])
                return len(cur) + only * (1 - (t - kb * W) / W)

            cur, prev = kept(b, events[g]), kept(b - 1, events[g])
            only = len([v for v in prev if v not in cur])
            raw = d.state.get(g)
            assert type(raw) is bytes
            kb = int.from_bytes(raw[:8], "little", signed=True)
            nprev, d_only = (int.from_bytes(raw[k : k + 4], "little") for k in (8, 12))
            assert (kb, nprev, d_only) == (b, len(prev), only), (i, n)
            assert raw[16 : 16 + 8 * nprev] == b"".join(value_hash(v) for v in prev)
            assert raw[16 + 8 * nprev :] == b"".join(value_hash(v) for v in cur)
            assert distinct_parts(raw) == (kb, raw[16 : 16 + 8 * nprev], raw[16 + 8 * nprev :], only)
            # the exact distinct count over (t - W, t] lies between the two (when nothing was capped)
            exact = len({v for x, v in events[g] if t - W < x <= t})
            if len(cur) < n and len(prev) < n:
                assert len(cur) <= exact <= len(cur) + only, (i, n)
            # firing: exactly when this event's new value takes the estimate from below n to n or above
            before = estimate(before_events)
            after = estimate(events[g])
            should = value not in kept(b, before_events) and before < n <= after
            fired = found.get(f"p.distinct{n}")
            assert (fired is not None) == should, (i, n, before, after)
            if fired is not None:
                seen[f"distinct fired (bound {n})"] += 1
                assert fired.value == pytest.approx(after)
                assert fired.event_ids == (event.id,) and dict(fired.group) == {"actor.ip": g}
    return seen


def count_steps() -> st.SearchStrategy[Steps]:
    step = st.one_of(
        st.integers(0, W // 10),
        st.integers(0, W // 4),
        st.integers(0, 3 * W // 2),
        st.sampled_from([0, 1, W // 2, W - 1, W, W + 1, 2 * W]),
    )
    behind = st.one_of(st.just(0), st.integers(0, LATENESS), st.integers(0, 2 * LATENESS))
    return st.lists(st.tuples(step, st.integers(0, len(GROUPS) - 1), behind), min_size=1, max_size=80)


def distinct_steps() -> st.SearchStrategy[Steps]:
    step = st.one_of(
        st.integers(0, W // 10),
        st.integers(0, W // 4),
        st.integers(0, 3 * W // 2),
        st.sampled_from([0, W - 1, W, 2 * W]),
    )
    return st.lists(
        st.tuples(step, st.integers(0, len(GROUPS) - 1), st.integers(0, 9)), min_size=1, max_size=80
    )


@pytest.mark.parametrize("native", NATIVE_MODES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=count_steps())
def test_property_count_matches_brute_force(
    property_rules: tuple[Rule, ...], steps: Steps, native: bool
) -> None:
    for what in check_count_stream(property_rules, steps, native):
        observe(what)


@pytest.mark.parametrize("native", NATIVE_MODES)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=distinct_steps())
def test_property_distinct_matches_brute_force(
    property_rules: tuple[Rule, ...], steps: Steps, native: bool
) -> None:
    for what in check_distinct_stream(property_rules, steps, native):
        observe(what)


def dense_stream(rng: random.Random, n: int, *, disorder: bool) -> Steps:
    """Many events per window, with occasional jumps (and, with ``disorder``, late and stale events)."""
    out: Steps = []
    for _ in range(n):
        r = rng.random()
        step = (
            rng.randrange(0, W // 20) if r < 0.85 else rng.choice([0, W - 1, W, W + 1, rng.randrange(2 * W)])
        )
        behind = rng.randrange(0, 2 * LATENESS) if disorder and rng.random() < 0.2 else 0
        out.append((step, rng.randrange(len(GROUPS)), behind if disorder else rng.randrange(10)))
    return out


@pytest.mark.parametrize("native", NATIVE_MODES)
def test_dense_random_streams_match_brute_force(property_rules: tuple[Rule, ...], native: bool) -> None:
    """Seeded long, dense streams: every bound is crossed, and late and stale events occur."""
    rng = random.Random(20261126)
    seen: Counter[str] = Counter()
    for _ in range(12):
        seen += check_count_stream(property_rules, dense_stream(rng, 150, disorder=True), native)
        seen += check_distinct_stream(property_rules, dense_stream(rng, 150, disorder=False), native)
    for n in BOUNDS:
        assert seen[f"count fired (bound {n})"] > 0, seen
        assert seen[f"distinct fired (bound {n})"] > 0, seen
    assert seen["late"] > 0 and seen["stale"] > 0, seen
    assert seen["window strictly inside the two-bucket range"] > 0, seen

"""Paths of ``distinct`` thresholds the property tests do not reach: the key limit, late events into the
previous bucket, and the ``at_most`` timer (``_distinct`` inlines the state's put and these checks); the
value hash and the state layout that snapshots keep."""

from __future__ import annotations

import hashlib
import struct
from datetime import timedelta
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import NATIVE_MODES, at, ev, feed, rule_doc, rules
from vigil.detectors.clock import to_ms
from vigil.detectors.engine import Detector
from vigil.detectors.threshold import distinct_from_v1, distinct_parts, value_hash
from vigil.events.model import Event

LOGIN = 'kind: generic\nmatch: action == "login"\n'


def distinct(tmp_path: Path, spec: str, max_keys: int = 1000, native: bool = False) -> Detector:
    doc = rule_doc("t.ips", LOGIN + f"threshold: {spec}\n")
    return Detector(rules(tmp_path, doc), lateness=timedelta(minutes=10), max_keys=max_keys, native=native)


@pytest.mark.parametrize("native", NATIVE_MODES)
def test_distinct_key_limit_counts_and_does_not_grow(tmp_path: Path, native: bool) -> None:
    det = distinct(tmp_path, "{distinct: actor.ip, at_least: 2, window: 5m, group_by: [actor.id]}", 2, native)
    events = [ev(f"e{i}-{who}", i, ip=f"ip{i}", actor_id=who) for i in range(3) for who in "abcd"]
    found = feed(det, events)
    stats = det.stats()["rules"]["t.ips"]  # type: ignore[index]
    assert stats["keys"] == 2
    assert stats["key_limit_hits"] == 6  # c and d, three events each
    assert sorted(dict(f.group)["actor.id"] for f in found) == ["a", "b"]


@pytest.mark.parametrize("native", NATIVE_MODES)
def test_distinct_late_event_into_previous_bucket_counts_whole(tmp_path: Path, native: bool) -> None:
    det = distinct(
        tmp_path, "{distinct: actor.ip, at_least: 3, window: 5m, group_by: [actor.id]}", native=native
    )

    def u(eid: str, s: float, ip: str) -> Event:
        return ev(eid, s, ip=ip, actor_id="u1")

    assert feed(det, [u("1", 200, "ip1"), u("2", 310, "ip2")]) == []  # buckets 0 and 1
    # late into bucket 0: values already kept in either bucket add nothing
    assert det.process(u("3", 250, "ip1")) == []
    assert det.process(u("4", 260, "ip2")) == []
    # a new value: the previous bucket counts whole while late, so 1 (current) + 2 (previous) = 3
    found = det.process(u("5", 270, "ip3"))
    assert [(f.event_ids, f.value) for f in found] == [(("5",), 3.0)]
    assert det.process(u("6", 280, "ip4")) == []  # fires once per crossing


def test_distinct_at_most_arms_the_timer(tmp_path: Path) -> None:
    det = distinct(tmp_path, "{distinct: actor.ip, at_most: 2, window: 5m, group_by: [actor.id]}")
    (ips,) = det.thresholds.values()
    feed(det, [ev("1", 10, ip="a", actor_id="u"), ev("2", 20, ip="b", actor_id="u")])
    assert ips.next_due == (to_ms(at(20)) // ips.w + 1) * ips.w  # the end of the group's bucket
    found = det.advance(timedelta(minutes=20))
    assert [(f.value, dict(f.group)) for f in found] == [(2, {"actor.id": "u"})]


@pytest.mark.parametrize("value", ["10.0.0.1", "", "ü\udcff", 3, 2.5, True])
def test_value_hash_is_stable_blake2b_of_the_text(value: object) -> None:
    """Snapshots keep these hashes: they must not change between versions or processes."""
    text = value if type(value) is str else repr(value)
    expected = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    assert value_hash(value) == expected
    assert value_hash(value) == expected  # (memoised)


def test_distinct_parts_and_the_version_1_layout() -> None:
    prev, cur = b"P" * 8 + b"Q" * 8, b"C" * 8
    st = struct.pack("<qII", 7, 2, 1) + prev + cur
    assert distinct_parts(st) == (7, prev, cur, 1)
    old = struct.pack("<qII", 7, 1, 1) + cur + prev  # version 1: header counts the current bucket
    assert distinct_from_v1(old) == st

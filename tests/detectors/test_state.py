"""Keyed state: the key limit, incremental sweeps that keep ``size`` right, and values the GC never walks."""

from __future__ import annotations

import gc
from datetime import timedelta
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import NATIVE_MODES, ev, feed, rule_doc, rules
from vigil.detectors.engine import SWEEP_EVERY, Detector
from vigil.detectors.state import SHARDS, KeyedState, WindowState


def real_size(state: WindowState) -> int:
    return sum(1 for _ in state.items())


def shard_no(key: str) -> int:
    """The shard a key lives in, for both kinds of state (KeyedState and the compiled count table)."""
    return hash(key) & (SHARDS - 1)


def test_put_get_pop() -> None:
    s = KeyedState()
    assert s.get("a") is None
    assert s.put("a", 1) and s.put("b", b"xy") and s.put("c", "z")
    assert (s.get("a"), s.get("b"), s.get("c")) == (1, b"xy", "z")
    assert s.put("a", 2) and s.get("a") == 2
    assert s.size == 3 == real_size(s)
    assert s.pop("a") == 2 and s.pop("a") is None
    assert s.size == 2 == real_size(s)
    assert s.pop("zero") is None
    assert s.put("zero", 0) and s.pop("zero") == 0  # a zero value is a value
    assert s.size == 2
    assert sorted(s.items()) == [("b", b"xy"), ("c", "z")]
    assert "b" in s.shards[shard_no("b")]
    s.clear()
    assert s.size == 0 == real_size(s)


def test_key_limit_counts_and_does_not_grow() -> None:
    s = KeyedState(limit=3)
    assert all(s.put(k, 1) for k in "abc")
    assert not s.put("d", 1)
    assert not s.put("e", 1)
    assert s.limited == 2 and s.size == 3 == real_size(s)
    assert s.get("d") is None
    # existing keys can still be updated at the limit
    assert s.put("a", 5) and s.get("a") == 5 and s.limited == 2
    # room again after a pop
    s.pop("b")
    assert s.put("d", 1) and s.size == 3


def test_sweep_is_incremental_and_keeps_size_consistent() -> None:
    s = KeyedState()
    for i in range(2000):
        s.put(f"k{i}", i)
    dead = lambda v: type(v) is int and v % 2 == 1  # noqa: E731
    expected_first = sum(1 for k, v in s.shards[0].items() if dead(v))
    assert s.sweep(dead) == expected_first  # one shard per call, round robin from the first
    assert all(not dead(v) for v in s.shards[0].values())
    # every other shard is untouched so far (all of its dead values are still there; checked over all of
    # them together: one shard holds about 8 keys, and with Python's per-process string hashing shard 1
    # alone had no odd value in about one run of 250)
    assert sum(dead(v) for sh in s.shards[1:] for v in sh.values()) == 1000 - expected_first
    assert s.size == 2000 - expected_first == real_size(s)
    removed = expected_first
    for _ in range(SHARDS - 1):
        removed += s.sweep(dead)
        assert s.size == real_size(s)
    assert removed == 1000 and s.size == 1000
    assert all(v % 2 == 0 for _, v in s.items())
    # a full round later: nothing left to remove; sweep_all covers every shard at once
    assert s.sweep_all(dead) == 0
    assert s.sweep_all(lambda v: True) == 1000 and s.size == 0 == real_size(s)


def test_sweep_more_shards_than_exist_is_one_round() -> None:
    s = KeyedState()
    for i in range(600):
        s.put(str(i), i)
    assert s.sweep(lambda v: True, shards=10_000) == 600
    assert s.size == 0


def test_packed_values_are_not_gc_tracked(tmp_path: Path) -> None:
    docs = [
        rule_doc(
            "t.count",
            'kind: generic\nmatch: action == "login"\nthreshold: {count: 50, window: 5m, group_by: [actor.ip]}\n',
        ),
        rule_doc(
            "t.sum",
            'kind: generic\nmatch: action == "login"\nthreshold: {sum: raw.n, at_least: 1e9, window: 5m, group_by: [actor.ip]}\n',
        ),
        rule_doc(
            "t.ips",
            'kind: generic\nmatch: action == "login"\nthreshold: {distinct: raw.n, at_least: 50, window: 5m, group_by: [actor.ip]}\n',
        ),
        rule_doc(
            "t.silent",
            'kind: generic\nmatch: action == "login"\nflatline: {period: 1h, group_by: [actor.ip]}\n',
        ),
        rule_doc(
            "t.seq",
            "kind: generic\nsuppress: 1h\nsequence:\n  by: [actor.ip]\n  within: 1h\n  steps:\n"
            '    - match: action == "login"\n    - match: action == "logout"\n',
        ),
        rule_doc("t.one", 'kind: generic\nmatch: action == "login"\nsuppress: 1h\n'),
    ]
    det = Detector(rules(tmp_path, *docs))
    events = [ev(f"e{i}", i, ip=f"10.0.{i % 7}.{i % 11}", raw={"n": i}) for i in range(300)]
    events += [ev("out", 301, action="logout", ip="10.0.0.0"), ev("in", 302, ip="10.0.0.0")]
    found = feed(det, events)
    assert {f.rule for f in found} == {"t.one", "t.seq"}
    names = det.states()
    assert set(names) == {
        "t.count",
        "t.sum",
        "t.ips",
        "t.silent",
        "t.seq",
        "t.one!suppress",
        "t.seq!suppress",
    }
    for name, (_, state) in names.items():
        values = [v for _, v in state.items()]
        assert values, name
        assert all(type(v) in (int, bytes, str) for v in values), name
        assert not any(gc.is_tracked(v) for v in values), name
    assert not any(gc.is_tracked(f) for f in found)


@pytest.mark.parametrize("form", ["count", "flatline", "sequence"])
def test_detector_key_limit(tmp_path: Path, form: str) -> None:
    body = {
        "count": 'match: action == "login"\nthreshold: {count: 2, window: 5m, group_by: [actor.ip]}\n',
        "flatline": 'match: action == "login"\nflatline: {period: 5m, group_by: [actor.ip]}\n',
        "sequence": 'sequence:\n  by: [actor.ip]\n  within: 1h\n  steps:\n    - match: action == "login"\n'
        '    - match: action == "logout"\n',
    }[form]
    det = Detector(rules(tmp_path, rule_doc("t.r", "kind: generic\n" + body)), max_keys=2)
    found = feed(det, [ev(f"e{i}-{ip}", i, ip=ip) for i in range(3) for ip in ("a", "b", "c", "d")])
    stats = det.stats()["rules"]["t.r"]  # type: ignore[index]
    assert stats["keys"] == 2  # type: ignore[index]
    assert stats["key_limit_hits"] == 6  # type: ignore[index]  # c and d, three events each
    assert det.open_keys() == 2
    if form == "count":
        assert sorted(dict(f.group)["actor.ip"] for f in found) == ["a", "b"]
    if form == "sequence":
        out = feed(det, [ev(f"x-{ip}", 10, action="logout", ip=ip) for ip in "abcd"])
        assert sorted(dict(f.group)["actor.ip"] for f in out) == ["a", "b"]
    if form == "flatline":
        out = det.advance(timedelta(hours=1))
        assert sorted(dict(f.group)["actor.ip"] for f in out) == ["a", "b"]


@pytest.mark.parametrize("native", NATIVE_MODES)
def test_detector_sweeps_dead_keys_one_shard_at_a_time(tmp_path: Path, native: bool) -> None:
    doc = rule_doc(
        "t.count",
        'kind: generic\nmatch: action == "login"\nthreshold: {count: 1000, window: 1m, group_by: [actor.ip]}\n',
    )
    det = Detector(rules(tmp_path, doc), lateness=timedelta(minutes=1), native=native)
    state = next(iter(det.thresholds.values())).state
    # string hashes change per process: pick names so that the first two shards surely hold some groups
    candidates = [f"g{i}" for i in range(20_000)]
    first_two = [g for g in candidates if shard_no(g) in (0, 1)]
    groups = first_two[:20]
    groups += [g for g in candidates if g not in groups][: SWEEP_EVERY - 12 - len(groups)]
    assert len(groups) == SWEEP_EVERY - 12
    feed(det, [ev(f"e{g}", 0, ip=g) for g in groups])
    assert state.size == len(groups)
    in_first = {g for g in groups if shard_no(g) == 0}
    assert in_first
    # 11 more events, ten minutes later: the watermark makes every old group dead, but no sweep has run yet
    feed(det, [ev(f"z{i}", 600, ip="zz") for i in range(11)])
    assert state.size == len(groups) + 1
    # the 512th event triggers one incremental sweep: only the first shard is cleaned
    det.process(ev("z-last", 600, ip="zz"))
    assert state.size == len(groups) + 1 - len(in_first) == real_size(state)
    assert all(state.get(g) is None for g in in_first)
    assert all(state.get(g) is not None for g in groups if g not in in_first)
    assert state.get("zz") is not None
    assert det.open_keys() == state.size
    # the following sweeps move on to the next shards
    feed(det, [ev(f"y{i}", 600, ip="zz") for i in range(SWEEP_EVERY)])
    in_second = {g for g in groups if shard_no(g) == 1}
    assert in_second and all(state.get(g) is None for g in in_second)
    assert state.size == len(groups) + 1 - len(in_first) - len(in_second) == real_size(state)

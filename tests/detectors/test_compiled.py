"""The compiled window tables of plain count and distinct rules (``compiled.py``): the KeyedState
interface over them, the hash table under inserts and deletions, the distinct blocks, expiry, snapshots
across both kinds of state, and the GC. (Window semantics: the brute-force tests of test_threshold.py run
both kinds.)"""

from __future__ import annotations

import gc
import random
import struct
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import ev, feed, rule_doc, rules
from vigil.detectors.compiled import BucketBelow, CountState, CountTable, DistinctState, DistinctTable, pack
from vigil.detectors.engine import Detector
from vigil.detectors.snapshot import restore, snapshot
from vigil.detectors.state import SHARDS, KeyedState
from vigil.detectors.threshold import value_hash
from vigil.errors import VigilError

pytestmark = pytest.mark.skipif(CountTable is None, reason="the compiled count table is not built")

COUNT = 'kind: generic\nmatch: action == "login"\nthreshold: {count: 3, window: 1m, group_by: [actor.ip]}\n'
DISTINCT = (
    'kind: generic\nmatch: action == "login"\n'
    "threshold: {distinct: actor.ip, at_least: 6, window: 1m, group_by: [actor.id]}\n"
)


def test_put_get_pop_items_clear_and_the_key_limit() -> None:
    s = CountState(60_000, 3, limit=3)
    assert s.get("a") is None and s.size == 0
    big = pack(29_000_000, 5, 7)  # a real bucket number: the packed int outgrows 64 bits
    assert big > 1 << 64
    assert s.put("a", big) and s.get("a") == big
    assert s.put("b", pack(1, 0, 0)) and s.put("c", 0)
    assert not s.put("d", 1) and s.limited == 1 and s.size == 3
    assert s.put("a", pack(2, 1, 1)) and s.get("a") == pack(2, 1, 1) and s.limited == 1  # existing: fine
    assert sorted(s.items()) == [("a", pack(2, 1, 1)), ("b", pack(1, 0, 0)), ("c", 0)]
    assert s.pop("b") == pack(1, 0, 0) and s.pop("b") is None and s.size == 2
    assert s.put("d", 1) and s.size == 3
    s.clear()
    assert s.size == 0 and list(s.items()) == [] and s.get("a") is None


def test_bad_values_and_keys_are_refused() -> None:
    s = CountState(60_000, 3)
    with pytest.raises(ValueError, match="packed"):
        s.put("a", b"xy")
    with pytest.raises(ValueError, match="packed"):
        s.put("a", pack(1 << 64, 0, 0))  # a bucket past int64: refused, not an OverflowError half-way
    assert s.put("a", pack(-1, 1, 0)) and s.get("a") == pack(-1, 1, 0)  # (before 1970: as KeyedState)
    s.clear()
    with pytest.raises(ValueError, match="2\\*\\*24"):
        s.table.set("a", 0, 1 << 24, 0)
    with pytest.raises(TypeError, match="str"):
        s.table.update(b"a", 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str"):
        s.get(1)  # type: ignore[arg-type]
    assert s.size == 0


def test_random_inserts_and_deletions_agree_with_a_dict() -> None:
    """Growth and backward-shift deletion: 60,000 random operations over a few thousand keys, checked
    against a dict at every thousandth step and at the end (every key, and nothing else)."""
    rng = random.Random(7)
    s = CountState(1000, 1 << 20, limit=1 << 30)
    model: dict[str, int] = {}
    keys = [f"k{i}" for i in range(5000)]
    for step in range(60_000):
        key = rng.choice(keys)
        if rng.random() < 0.4:
            assert (s.pop(key) is not None) == (model.pop(key, None) is not None)
        else:
            value = pack(rng.randrange(1 << 30), rng.randrange(1 << 24), rng.randrange(1 << 24))
            assert s.put(key, value)
            model[key] = value
        if step % 1000 == 0:
            assert s.size == len(model)
            assert all(s.get(k) == v for k, v in model.items())
    assert dict(s.items()) == model and s.size == len(model)
    assert all(s.get(k) is None for k in keys if k not in model)


def test_keys_of_every_width_are_found_by_their_text_not_their_object() -> None:
    """Keys are compared by their hash and a fingerprint of their code units, not by reading the stored str:
    an equal key built another way (a new object, from bytes, by joining parts) finds the same group, for
    one-, two- and four-byte characters alike, and near-misses (one character, one width) do not."""
    texts = ["203.0.113.9", "résumé-ü", "日本語のキー", "emoji-𝓿-key", "", "a" * 500, "é" * 40]
    s = CountState(1000, 1 << 20, limit=1 << 30)
    for i, text in enumerate(texts):
        assert s.put(text, pack(i, 1, 0))
    for i, text in enumerate(texts):
        rebuilt = text.encode("utf-8").decode("utf-8")
        joined = "".join(list(text))
        assert rebuilt is not text or not text
        assert s.get(rebuilt) == pack(i, 1, 0) == s.get(joined)
    for near in ["203.0.113.90", "résumé-u", "日本語のキ", "emoji-v-key", " ", "a" * 499, "e" * 40]:
        assert s.get(near) is None
    # the same code points in a wider form do not exist in CPython (strs are canonical), so width is part
    # of the fingerprint; every key still lists as the str it was stored with
    assert dict(s.items()) == {t: pack(i, 1, 0) for i, t in enumerate(texts)}


def test_update_counts_rolls_over_gaps_and_hands_late_events_back() -> None:
    table = CountState(1000, 3).table
    assert table.update("a", 5_000) is None and table.get("a") == (5, 1, 0)
    assert table.update("a", 5_100) is None
    assert table.update("a", 5_200) == 3 and type(table.update("a", 5_300)) is not int  # None: once
    assert table.get("a") == (5, 4, 0)
    crossed = table.update("a", 6_500)  # the next bucket: before it, 4 * 0.5 = 2 < 3 <= 3
    assert crossed == 3.0 and type(crossed) is float and table.get("a") == (6, 1, 4)
    assert table.update("a", 4_000) is ...  # a late event: the general path decides
    assert table.get("a") == (6, 1, 4)  # (and it did not touch the state)
    assert table.update("a", 8_000) is None  # a gap: nothing is left in the window, the group starts over
    assert table.get("a") == (8, 1, 0)
    assert table.update("b", -1) is None and table.get("b") == (-1, 1, 0)  # floor division, as Python's
    once = CountState(1000, 1).table  # at_least 1: the first event after a gap fires again, as a new group's
    assert once.update("x", 0) == 1 and once.update("x", 900) is None and once.update("x", 5_000) == 1
    tiny = CountState(1, 1).table  # 1 ms buckets: the lowest time is the lowest bucket, which has none before
    lowest = -(1 << 63)
    assert (
        tiny.update("y", lowest) == 1 and tiny.update("y", lowest + 5) == 1 and tiny.get("y")[0] == lowest + 5
    )
    assert tiny.update("y", lowest) is ...  # late


def test_sweeps_drop_dead_keys_in_c_or_by_a_predicate_alike() -> None:
    a, b = CountState(1000, 3), CountState(1000, 3)
    for i in range(3000):
        for s in (a, b):
            s.put(f"k{i}", pack(i % 10, 1, 0))
    dead = BucketBelow(5)
    assert a.sweep(dead, shards=SHARDS // 2) + a.sweep(dead, shards=SHARDS) == 1500  # (compiled expiry)
    assert b.sweep_all(lambda v: type(v) is int and v >> 48 < 5) == 1500  # (a predicate per key)
    assert dict(a.items()) == dict(b.items()) and a.size == b.size == 1500
    assert all(v >> 48 >= 5 for _, v in a.items())
    # with a generation, each shard is visited once until it changes
    assert a.pending(1) and a.sweep(BucketBelow(10), shards=SHARDS, generation=1) == 1500
    assert not a.pending(1) and a.sweep(BucketBelow(10), shards=SHARDS, generation=1) == 0


def test_keys_are_released_and_nothing_is_gc_tracked() -> None:
    s = CountState(1000, 3)
    key = "".join(["grp", "-1"])  # a fresh str, referenced only here
    base = sys.getrefcount(key)
    s.table.update(key, 0)
    assert sys.getrefcount(key) == base + 1
    s.pop(key)
    assert sys.getrefcount(key) == base
    s.table.update(key, 0)
    s.clear()
    assert sys.getrefcount(key) == base
    assert not gc.is_tracked(s.table)


@pytest.mark.parametrize("native_first", [True, False])
def test_snapshots_move_between_compiled_and_python_state(tmp_path: Path, native_first: bool) -> None:
    loaded = rules(tmp_path, rule_doc("t.c", COUNT))
    source = Detector(loaded, native=native_first)
    feed(source, [ev(f"e{i}", i * 7, ip=f"10.0.0.{i % 5}") for i in range(40)])
    target = Detector(loaded, native=not native_first)
    report = restore(target, snapshot(source))
    assert report.keys == 5
    (src,), (dst,) = source.thresholds.values(), target.thresholds.values()
    assert isinstance(src.state, CountState) == native_first != isinstance(dst.state, CountState)
    assert dict(src.state.items()) == dict(dst.state.items())
    # and both go on alike
    more = [ev(f"m{i}", 280 + i, ip="10.0.0.1") for i in range(4)]
    assert feed(source, more) == feed(target, more)


def test_a_snapshot_with_a_bad_count_entry_loads_nothing(tmp_path: Path) -> None:
    loaded = rules(tmp_path, rule_doc("t.c", COUNT))
    source = Detector(loaded, native=False)
    feed(source, [ev(f"e{i}", i, ip=f"10.0.0.{i}") for i in range(3)])
    (det,) = source.thresholds.values()
    assert isinstance(det.state, KeyedState)
    det.state.put("10.0.0.9", b"not a count")
    target = Detector(loaded, native=True)
    with pytest.raises(VigilError, match="not a packed int"):
        restore(target, snapshot(source))
    assert target.open_keys() == 0


def test_a_hot_reload_keeps_the_compiled_state(tmp_path: Path) -> None:
    loaded = rules(tmp_path, rule_doc("t.c", COUNT))
    old = Detector(loaded, lateness=timedelta(minutes=5), native=True)
    feed(old, [ev("e1", 0, ip="x"), ev("e2", 1, ip="x")])
    new = Detector(loaded, lateness=timedelta(minutes=5), native=True)  # (even under VIGIL_PURE_PYTHON)
    assert new.adopt(old) == ["t.c"]
    assert [(f.rule, f.value) for f in new.process(ev("e3", 2, ip="x"))] == [("t.c", 3)]
    # a pure-Python detector does not take a compiled state (nor the reverse): it starts empty
    python = Detector(loaded, native=False)
    assert python.adopt(new) == [] and python.open_keys() == 0


def h(n: int) -> bytes:
    return value_hash(f"v{n}")


def dist(bucket: int, prev: list[int], cur: list[int], only: int) -> bytes:
    return struct.pack("<qII", bucket, len(prev), only) + b"".join(map(h, prev)) + b"".join(map(h, cur))


def test_distinct_update_keeps_the_layout_of_the_python_state() -> None:
    s = DistinctState(1000, 3, limit=10, cap=3)
    u = s.values.update
    assert u("g", 5_000, h(1)) is None and s.get("g") == dist(5, [], [1], 0)
    assert u("g", 5_100, h(1)) is None and s.get("g") == dist(5, [], [1], 0)  # a value counts once
    assert u("g", 5_200, h(2)) is None
    got = u("g", 5_300, h(3))
    assert got == 3.0 and type(got) is float and s.get("g") == dist(5, [], [1, 2, 3], 0)
    assert u("g", 5_400, h(4)) is None and s.get("g") == dist(5, [], [1, 2, 3], 0)  # capped at 3
    # the next bucket: the current values become the previous ones, all "only there" until seen again
    assert u("g", 6_500, h(2)) is None and s.get("g") == dist(6, [1, 2, 3], [2], 2)
    assert u("g", 8_000, h(9)) is None and s.get("g") == dist(8, [], [9], 0)  # a gap forgets both
    assert u("g", 7_000, h(1)) is ...  # late: the Python path decides
    assert u("f", 0, h(1)) is None and s.size == 2
    with pytest.raises(TypeError, match="8 bytes"):
        u("g", 0, b"short")  # type: ignore[arg-type]


def test_distinct_blocks_grow_past_their_first_room_and_round_trip() -> None:
    s = DistinctState(1000, 100, limit=10, cap=50)
    for i in range(40):
        s.values.update("g", 1_000 + i, h(i))
    for i in range(45):
        s.values.update("g", 2_000 + i, h(100 + i))
    packed = s.get("g")
    assert packed == dist(2, list(range(40)), [100 + i for i in range(45)], 40)
    t = DistinctState(1000, 100, limit=10, cap=50)
    assert t.put("g", packed) and t.get("g") == packed and dict(t.items()) == {"g": packed}
    assert s.pop("g") == packed and s.size == 0 and s.get("g") is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"short", "not packed bytes"),
        ("text", "not packed bytes"),
        (struct.pack("<qII", 1, 2, 0) + h(1), "does not fit"),  # two previous hashes announced, one there
        (struct.pack("<qII", 1, 1, 2) + h(1), "does not fit"),  # more "only" than previous
        (dist(1, [], [1, 2, 3, 4], 0), "does not fit"),  # more current values than the rule keeps
    ],
)
def test_distinct_state_refuses_values_that_do_not_fit(value: object, why: str) -> None:
    s = DistinctState(1000, 3, limit=10, cap=3)
    with pytest.raises(ValueError, match=why):
        s.put("g", value)  # type: ignore[arg-type]
    assert s.size == 0


@pytest.mark.parametrize("native_first", [True, False])
def test_distinct_snapshots_move_between_compiled_and_python_state(
    tmp_path: Path, native_first: bool
) -> None:
    loaded = rules(tmp_path, rule_doc("t.d", DISTINCT))
    source = Detector(loaded, native=native_first)
    events = [ev(f"e{i}", i * 11, ip=f"10.0.0.{i % 7}", actor_id=f"u{i % 3}") for i in range(30)]
    feed(source, events)
    target = Detector(loaded, native=not native_first)
    assert restore(target, snapshot(source)).keys == 3
    (src,), (dst,) = source.thresholds.values(), target.thresholds.values()
    assert isinstance(src.state, DistinctState) == native_first != isinstance(dst.state, DistinctState)
    assert dict(src.state.items()) == dict(dst.state.items())
    more = [ev(f"m{i}", 330 + i, ip=f"10.9.0.{i}", actor_id="u1") for i in range(8)]
    assert feed(source, more) == feed(target, more)


def test_a_table_used_before_its_init_refuses_keys_instead_of_crashing() -> None:
    for table in (CountTable.__new__(CountTable), DistinctTable.__new__(DistinctTable)):
        got = table.update("a", 1) if type(table) is CountTable else table.update("a", 1, b"12345678")
        assert got is None and table.size == 0 and table.limited == 1
    with pytest.raises(TypeError):
        CountTable(1000, 3.0, 10, 5)  # type: ignore[call-arg]  # (a cap is for distinct tables only)


def test_listing_a_shard_survives_a_collection_that_empties_the_table() -> None:
    """shard_items copies the shard before it allocates anything the collector tracks: a collection in
    the middle (here forced at every allocation, with a callback that clears the table) cannot make it
    read freed slots; the list is the shard as it was."""
    s = CountState(1000, 3)
    for i in range(4000):
        s.put(f"k{i}", pack(1, i % 7, 0))
    busiest = max(range(SHARDS), key=lambda i: len(s.table.shard_items(i)))
    expected = sorted(s.table.shard_items(busiest))
    cleared = []

    def clear(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and not cleared:
            cleared.append(True)
            s.clear()

    # CPython counts only allocations that miss its free lists, and earlier tests may have filled the
    # 2-tuple list: hold enough pairs that the call's own tuples are new objects and do count
    held = [(i, -i) for i in range(10_000)]
    threshold = gc.get_threshold()
    gc.callbacks.append(clear)
    gc.set_threshold(1)
    try:
        got = s.table.shard_items(busiest)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(clear)
    assert cleared and sorted(got) == expected and s.size == 0
    del held


def test_distinct_expiry_in_c_matches_the_predicate() -> None:
    a, b = DistinctState(1000, 9, limit=10_000, cap=4), DistinctState(1000, 9, limit=10_000, cap=4)
    for i in range(2000):
        for s in (a, b):
            s.values.update(f"g{i}", (i % 10) * 1000 + 5, h(i % 3))
    dead = BucketBelow(5)
    assert a.sweep_all(dead) == 1000  # (compiled expiry: type(dead) is BucketBelow)
    assert b.sweep_all(lambda v: dead(v)) == 1000  # noqa: PLW0108 - (a predicate per key)
    assert dict(a.items()) == dict(b.items()) and a.size == b.size == 1000


def test_expiry_gives_back_the_slots_of_a_burst() -> None:
    """An always-on daemon sees bursts of keys (a scan over many resources): once they expire, the shards
    shrink instead of keeping the burst's peak for the process's lifetime."""
    s = CountState(1000, 3, limit=1_000_000)
    table = s.counts
    for i in range(100_000):
        s.put(f"burst{i}", pack(i % 100, 1, 0))
    peak = table.slots
    assert peak >= 100_000 * 4 // 3
    survivors = {k: v for k, v in s.items() if v >> 48 >= 99}  # 1,000 keys in the newest bucket
    assert s.sweep_all(BucketBelow(99)) == 99_000
    assert dict(s.items()) == survivors and s.size == 1000
    assert table.slots <= 1000 * 8 // 3 + SHARDS * 8  # at most 3/8 full, or the least a shard holds
    for key, value in survivors.items():  # every survivor is still found where probing looks for it
        assert s.get(key) == value
    for i in range(5000):  # and the shards grow again as keys come
        s.put(f"next{i}", pack(100, 1, 0))
    assert s.size == 6000 and all(s.get(f"next{i}") == pack(100, 1, 0) for i in range(5000))
    assert s.sweep_all(BucketBelow(1000)) == 6000 and table.slots == 0


def test_random_inserts_and_expiries_agree_with_a_dict() -> None:
    rng = random.Random(7)
    s, want = CountState(1000, 3, limit=1_000_000), {}
    for step in range(40):
        for _ in range(rng.choice([10, 500, 5000])):
            key, value = f"k{rng.randrange(20_000)}", pack(step, rng.randrange(1, 9), 0)
            s.put(key, value)
            want[key] = value
        oldest = step - rng.randrange(0, 4)
        assert s.sweep_all(BucketBelow(oldest)) == sum(1 for v in want.values() if v >> 48 < oldest)
        want = {k: v for k, v in want.items() if v >> 48 >= oldest}
        assert dict(s.items()) == want and all(s.get(k) == v for k, v in want.items())

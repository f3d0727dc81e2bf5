"""The generated updates of plain count rules (and of plain distinct rules in the compiled table): which rules
get one, what it reads, and that it agrees with the general path on keys, limits, missing fields and state
adopted by a hot reload."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from tests.detectors.stateful_helpers import NATIVE_MODES, ev, rule_doc, rules
from vigil.detectors.compiled import NATIVE, CountState, DistinctState
from vigil.detectors.engine import Detector
from vigil.detectors.fastpath import attribute_path, count_update, distinct_update
from vigil.detectors.threshold import ThresholdDetector
from vigil.events.model import Event
from vigil.rules.model import Rule

LOGIN = 'kind: generic\nmatch: action == "login"\n'


def doc(rule_id: str, spec: str) -> str:
    return rule_doc(rule_id, LOGIN + f"threshold: {spec}\n")


def th(det: Detector, rule_id: str) -> ThresholdDetector:
    return next(t for t in det.thresholds.values() if t.rule.id == rule_id)


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("actor.ip", "e.actor.ip"),
        ("resource.id", "e.resource.id"),
        ("action", "e.action"),
        ("labels.team", None),
        ("raw.properties.x", None),
        ("actor.nope", None),
        ("time", None),  # not a string field
        ("actor.ip.x", None),
    ],
)
def test_attribute_path_only_for_string_fields_of_the_structs(field: str, path: str | None) -> None:
    assert attribute_path(field) == path


def test_only_plain_count_rules_get_a_generated_update(tmp_path: Path) -> None:
    det = Detector(
        rules(
            tmp_path,
            doc("t.count", "{count: 3, window: 5m, group_by: [actor.ip]}"),
            doc("t.most", "{count: true, at_most: 5, window: 5m, group_by: [actor.ip]}"),
            doc("t.distinct", "{distinct: actor.id, at_least: 2, window: 5m, group_by: [actor.ip]}"),
        )
    )
    assert count_update(th(det, "t.count")) is not None
    assert count_update(th(det, "t.most")) is None
    assert count_update(th(det, "t.distinct")) is None
    # a plain distinct rule gets one where its windows are in the compiled table
    assert (distinct_update(th(det, "t.distinct")) is not None) == NATIVE
    assert distinct_update(th(det, "t.count")) is None and distinct_update(th(det, "t.most")) is None


def test_bound_of_one_fires_on_the_first_event_and_once(tmp_path: Path) -> None:
    det = Detector(rules(tmp_path, doc("t.one", "{count: 1, window: 5m, group_by: [actor.ip]}")))
    first = det.process(ev("e1", 0, ip="192.0.2.1"))
    assert [(f.rule, f.value, dict(f.group)) for f in first] == [("t.one", 1, {"actor.ip": "192.0.2.1"})]
    assert det.process(ev("e2", 1, ip="192.0.2.1")) == []


def test_key_limit_is_counted_and_existing_groups_still_count(tmp_path: Path) -> None:
    det = Detector(rules(tmp_path, doc("t.c", "{count: 2, window: 5m, group_by: [actor.ip]}")), max_keys=2)
    for i, ip in enumerate(["a", "b", "c", "d"]):
        det.process(ev(f"e{i}", i, ip=ip))
    state = th(det, "t.c").state
    assert state.size == 2 and state.limited == 2
    fired = det.process(ev("e9", 9, ip="a"))
    assert [f.rule for f in fired] == ["t.c"]


def test_missing_field_and_multi_field_and_label_keys(tmp_path: Path) -> None:
    det = Detector(
        rules(
            tmp_path,
            doc("t.ip", "{count: 2, window: 5m, group_by: [actor.ip]}"),
            doc("t.two", "{count: 2, window: 5m, group_by: [actor.ip, actor.id]}"),
            doc("t.label", "{count: 2, window: 5m, group_by: [labels.team]}"),
        )
    )
    out = det.process(ev("e1", 0, actor_id="u1", labels={"team": "red"}))
    out += det.process(ev("e2", 1, actor_id="u1", labels={"team": "red"}))
    groups = {f.rule: dict(f.group) for f in out}
    assert groups == {
        "t.ip": {"actor.ip": ""},  # a missing field groups as ""
        "t.two": {"actor.ip": "", "actor.id": "u1"},
        "t.label": {"labels.team": "red"},
    }


def test_a_hot_reload_rebinds_the_update_to_the_adopted_state(tmp_path: Path) -> None:
    text = doc("t.c", "{count: 3, window: 5m, group_by: [actor.ip]}")
    old = Detector(rules(tmp_path, text), lateness=timedelta(minutes=5))
    old.process(ev("e1", 0, ip="x"))
    old.process(ev("e2", 1, ip="x"))
    new = Detector(rules(tmp_path, text), lateness=timedelta(minutes=5))
    assert new.adopt(old) == ["t.c"]
    assert th(new, "t.c").state is th(old, "t.c").state
    fired = new.process(ev("e3", 2, ip="x"))
    assert [(f.rule, f.value) for f in fired] == [("t.c", 3)]
    assert th(new, "t.c").state.size == 1


@pytest.mark.parametrize("native", NATIVE_MODES)
def test_generated_updates_agree_with_the_general_path_on_random_streams(
    tmp_path: Path, native: bool
) -> None:
    """A differential check of every written-out case (new group, same bucket, next bucket, one and two
    key fields, bound 1) against ``ThresholdDetector.on_event`` on the same events, including gaps of
    several buckets and late events, which the generated code hands to that general path. With
    ``native`` the windows are in the compiled table (and the general path runs on it too), and a pure
    Python detector must agree with it finding for finding and key for key."""
    docs = [
        doc(f"t.{name}{n}", f"{{count: {n}, window: 1m, group_by: {fields}}}")
        for n in (1, 2, 3, 5)
        for name, fields in (
            ("ip", "[actor.ip]"),
            ("pair", "[actor.ip, actor.id]"),
            ("team", "[labels.team]"),
        )
    ]
    fast = _agree(
        rules(tmp_path, *docs),
        native,
        20261126,
        lambda rng, eid, when: ev(
            eid,
            when,
            ip=rng.choice(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
            actor_id=rng.choice(["u1", "u2", None]),
            labels={"team": rng.choice(["red", "blue"])},
        ),
    )
    assert all(isinstance(d.state, CountState) == native for d in fast.thresholds.values())
    assert all(count_update(d) is not None for d in fast.thresholds.values())


def _agree(loaded: tuple[Rule, ...], native: bool, seed: int, make: Callable[..., Event]) -> Detector:
    """3,000 random events (``make(rng, id, seconds)``, some late, gaps of several buckets) through a
    detector with the generated updates, one with the rules' ``on_event`` methods instead (both ``native``
    or not) and a pure-Python one: the same findings (values of the same type: 3, not 3.0), the same state
    and stale counts at the end, and enough findings to mean something. Returns the first detector."""
    fast = Detector(loaded, lateness=timedelta(seconds=90), native=native)
    general = Detector(loaded, lateness=timedelta(seconds=90), native=native)
    general._updates = {k: d.on_event for k, d in general.thresholds.items()}
    python = Detector(loaded, lateness=timedelta(seconds=90), native=False)
    rng = random.Random(seed)
    now = 0.0
    fired = 0
    for i in range(3000):
        now += rng.choice([0.5, 2, 7, 30, 59.9, 60, 61, 130])
        event = make(rng, f"e{i}", now - (rng.uniform(0, 80) if rng.random() < 0.1 else 0))
        got, want, theirs = fast.process(event), general.process(event), python.process(event)
        assert got == want == theirs, i
        assert [type(f.value) for f in got] == [type(f.value) for f in theirs], i
        fired += len(got)
    assert fired > 100
    for rid, det in fast.thresholds.items():
        assert dict(det.state.items()) == dict(general.thresholds[rid].state.items())
        assert dict(det.state.items()) == dict(python.thresholds[rid].state.items())
        assert det.stale == general.thresholds[rid].stale == python.thresholds[rid].stale
    return fast


@pytest.mark.skipif(not NATIVE, reason="the compiled tables are not built or turned off")
def test_generated_distinct_updates_agree_with_the_methods_on_random_streams(tmp_path: Path) -> None:
    """The same differential check for plain distinct rules: the generated update against
    ``_distinct_compiled`` on the same compiled table, and a pure-Python detector, with the counted value
    read as an attribute (``actor.id``), through a getter (``labels.team``), missing, and not a string
    (``raw.n``: counted by its repr), late events included."""
    docs = [
        doc(f"t.{name}{n}", f"{{distinct: {field}, at_least: {n}, window: 1m, group_by: {fields}}}")
        for n in (1, 2, 3)
        for name, field, fields in (
            ("id", "actor.id", "[actor.ip]"),
            ("team", "labels.team", "[actor.ip, actor.id]"),
            ("n", "raw.n", "[labels.team]"),
        )
    ]
    fast = _agree(
        rules(tmp_path, *docs),
        True,
        20261127,
        lambda rng, eid, when: ev(
            eid,
            when,
            ip=rng.choice(["10.0.0.1", "10.0.0.2"]),
            actor_id=rng.choice(["u1", "u2", "u3", "u4", None]),
            labels={"team": rng.choice(["red", "blue", "green"])},
            raw={"n": rng.choice([1, 2, "1", 3.5, None])},
        ),
    )
    assert all(isinstance(d.state, DistinctState) for d in fast.thresholds.values())
    assert all(distinct_update(d) is not None for d in fast.thresholds.values())

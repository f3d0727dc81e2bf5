"""Reliability B8: fuzzed events against every shipped rule.

Records of every source format (the good fixtures), mutated at random (leaves replaced by values of other
types, unicode, huge numbers, nesting; keys dropped or added), go through the normalizers and then through
a detector holding the whole shipped pack. What may happen: a record is dead-lettered with a reason, or
becomes events; a rule may raise its declared error on an event it cannot judge
(:class:`~vigil.rules.expr.RuleRuntimeError`, counted per rule). Nothing else may raise, anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import EVENT_FIXTURES
from vigil.detectors.engine import Detector
from vigil.events.batch import BatchNormalizer
from vigil.events.model import Event
from vigil.rules.expr import RuleRuntimeError
from vigil.rules.loader import load_rules
from vigil.rules.model import Rule

SHIPPED = Path(__file__).resolve().parents[2] / "rules"


def _records() -> list[Any]:
    out: list[Any] = []
    for path in sorted(EVENT_FIXTURES.glob("*/good_*.json*")):
        text = path.read_text(encoding="utf-8")
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:  # JSON Lines
            out += [json.loads(line) for line in text.splitlines() if line.strip()]
    return out


RECORDS = _records()
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", " ", "null", "0", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "\u0000", "é𝓿"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(record: Any, data: st.DataObject) -> Any:
    record = json.loads(json.dumps(record))  # a copy
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        paths = [p for p in _paths(record) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = record
        for step in path[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=12))] = data.draw(VALUES)
        else:
            parent[path[-1]] = data.draw(VALUES)
    return record


@pytest.fixture(scope="module")
def shipped() -> tuple[Rule, ...]:
    ruleset = load_rules([SHIPPED])
    assert ruleset.ok, [d.format() for d in ruleset.diagnostics]
    return ruleset.rules


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_of_every_format_meet_the_shipped_rules(
    shipped: tuple[Rule, ...], data: st.DataObject
) -> None:
    record = _mutate(data.draw(st.sampled_from(RECORDS)), data)
    # A fresh detector per example, its fault hook replaced before any bucket is compiled (buckets bind it)
    detector = Detector(shipped)
    faults: list[Exception] = []
    real = detector.matcher.fault

    def fault(rule: Rule, event: Event | None, exc: Exception, *, bug: bool = False) -> None:
        faults.append(exc)
        real(rule, event, exc, bug=bug)

    detector.matcher.fault = fault  # type: ignore[method-assign]
    result = BatchNormalizer("auto").body(json.dumps(record).encode(), "fuzz")
    assert all(d.reason for d in result.dead)
    for event in result.events:
        detector.process(event)
    undeclared = [f for f in faults if not isinstance(f, RuleRuntimeError)]
    assert not undeclared, undeclared

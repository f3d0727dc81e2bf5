"""Property: a compiled expression decides exactly as rule-engine itself (``evaluate_reference``) does.

Random canonical events (kinds, actions, addresses, resource types, nested ``raw`` values that may be missing,
null, numbers, strings, booleans, arrays or objects) against random expressions built from the operators and
functions of the language. Both sides must give the same bool, or both must raise RuleRuntimeError.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.events.model import Actor, Event, Resource, freeze
from vigil.rules.expr import RuleRuntimeError, compile_expression, evaluate_reference
from vigil.rules.model import ListDef

LISTS = {
    "vals": ListDef("vals", "values", values=frozenset({"a", "secretget", "azure.keyvault"})),
    "nets": ListDef("nets", "cidr", networks=(ipaddress.ip_network("10.0.0.0/8"),)),
}
STRINGS = [
    "",
    "a",
    "b",
    "ab",
    "A",
    "azure.keyvault",
    "secretget",
    "SecretGet",
    "10.1.2.3",
    "microsoft.keyvault/x",
]
STR_FIELDS = ["kind", "action", "actor.ip", "resource.type", "labels.env"]
RAW_FIELDS = ["raw.a", "raw.b", "raw.a.b", "raw.c[0]", 'raw["b"]', "raw.c", "raw.missing", "raw.a.c.a"]
NUMBERS = ["0", "1", "2.5", "-3", "1e3", "0.5"]
PATTERNS = ['"^a"', '"b$"', '"(?i)SEC"', '"[0-9]+"', '"x|y"', '"^(a+)+$"', '"keyvault"']

strings = st.sampled_from(STRINGS).map(json.dumps)
numbers = st.sampled_from(NUMBERS)
literals = st.one_of(strings, numbers, st.sampled_from(["null", "true", "false"]))
raw_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 2.5, 1.0, -3.0, 1000.0]),
    st.sampled_from(STRINGS),
)
raw_values = st.recursive(
    raw_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def leaves(draw: st.DrawFn) -> str:
    raw = draw(st.sampled_from(RAW_FIELDS))
    field = draw(st.one_of(st.sampled_from(STR_FIELDS), st.just(raw)))
    other = draw(st.sampled_from(STR_FIELDS + RAW_FIELDS))
    lit = draw(literals if field in RAW_FIELDS else st.one_of(strings, st.just("null")))
    s1, s2, num, pat = draw(strings), draw(strings), draw(numbers), draw(st.sampled_from(PATTERNS))
    options = [
        f"{field} == {lit}",
        f"{field} != {lit}",
        f"{field} == {other}",
        f"{field} in [{lit}, {s1}]",
        f"{field} in lists.vals",
        f"{s1} in {field}",
        f"{lit} in {raw}",
        f"startswith({field}, {s1})",
        f"endswith({field}, [{s1}, {s2}])",
        f"startswith({field}, lists.vals)",
        f"contains({field}, {lit})",
        f"{field} =~ {pat}",
        f"{field} =~~ {pat}",
        f"{field} !~ {pat}",
        f"{field} !~~ {pat}",
        f"regex({field}, {pat})",
        f"lower({field}) == {s1}",
        f"upper({field}) != {s1}",
        f"len({field}) == {num}",
        f"{raw} > {num}",
        f"{raw} <= {num}",
        f"{raw} >= {s1}",
        "cidr_match(actor.ip, lists.nets)",
        f'cidr_match({field}, "10.1.0.0/16")',
        f"{raw}",
        f"({raw} ?? {s1}) == {s2}",
    ]
    return draw(st.sampled_from(options))


expressions = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        inner.map(lambda e: f"not ({e})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) and ({p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) or ({p[1]})"),
        st.tuples(inner, inner, inner).map(lambda p: f"{p[0]} and {p[1]} or not {p[2]}"),
    ),
    max_leaves=5,
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    return Event(
        id="e",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        kind=draw(st.sampled_from(["azure.keyvault", "azure.activity", "generic"])),
        action=draw(st.sampled_from(["secretget", "SecretGet", "microsoft.keyvault/x", "a", ""])),
        actor=Actor(ip=draw(st.sampled_from([None, "10.1.2.3", "203.0.113.9", "2001:db8::1", "bogus", "a"]))),
        resource=Resource(type=draw(st.sampled_from([None, "microsoft.keyvault/vaults", "b", "ab"]))),
        labels=freeze(draw(st.sampled_from([{}, {"env": "prod"}, {"env": "a"}]))),
        raw=freeze(draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), raw_values, max_size=3))),
    )


def outcome(fn: Any, event: Event) -> bool | str:
    try:
        result = fn(event)
    except RuleRuntimeError:
        return "error"
    assert isinstance(result, bool)
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions, st.lists(events(), min_size=1, max_size=4))
def test_compiled_equals_rule_engine(text: str, sample: list[Event]) -> None:
    expr = compile_expression(text, lists=LISTS, cost_budget=10_000)
    for event in sample:
        compiled = outcome(expr, event)
        reference = outcome(lambda e: evaluate_reference(expr, e), event)
        assert compiled == reference, (text, event.raw, event)

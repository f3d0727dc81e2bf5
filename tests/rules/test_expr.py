"""Rule expressions: operators, functions, null semantics, load-time errors with offsets, macros, hints."""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from vigil.events.model import Actor, Event, FrozenMap, Node, Resource, freeze
from vigil.rules.expr import (
    DEFAULT_COST_BUDGET,
    EVENT_FIELDS,
    CompiledExpr,
    ExprError,
    IndexHint,
    RuleRuntimeError,
    compile_expression,
    evaluate_reference,
)
from vigil.rules.model import ListDef

LISTS = {
    "corp": ListDef(
        "corp", "cidr", networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
    ),
    "admins": ListDef("admins", "values", values=frozenset({"alice", "bob"})),
    "vm_prefixes": ListDef("vm_prefixes", "values", values=frozenset({"/subscriptions/s/vms/"})),
}
MACROS = {
    "kv_read": 'kind == "azure.keyvault" and action == "secretget"',
    "from_corp": "cidr_match(actor.ip, lists.corp)",
    "external_kv_read": "kv_read and not from_corp",
    "bad_regex": 'regex(action, "(a)\\\\1")',
    "uses_bad_regex": "kv_read and bad_regex",
    "loop_a": "loop_b or kind == 'x'",
    "loop_b": "loop_a",
    "broken": "action ==",
}


def ev(**kw: Any) -> Event:
    """An event with sensible defaults; ``raw``/``labels`` dicts and ``actor``/``resource``/``node`` dicts."""
    data: dict[str, Any] = {
        "id": "e1",
        "time": datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        "kind": "azure.keyvault",
        "action": "secretget",
        "outcome": "success",
    }
    data.update(kw)
    data["raw"] = freeze(data.get("raw"))
    data["labels"] = freeze(data.get("labels"))
    for key, cls in (("actor", Actor), ("resource", Resource), ("node", Node)):
        if isinstance(data.get(key), dict):
            data[key] = cls(**data[key])
    return Event(**data)


EVENT = ev(
    actor={"ip": "10.1.2.3", "id": "alice", "name": "Alice"},
    resource={"type": "microsoft.keyvault/vaults", "id": "/subscriptions/s/vms/vm1"},
    node={"attested": True},
    labels={"env": "prod"},
    raw={
        "properties": {"httpStatusCode": 403, "statusCode": "Forbidden", "ratio": 0.5, "flag": True},
        "tags": ["a", "b"],
        "items": [{"name": "x"}, {"name": "y"}],
        "empty": {},
        "nothing": None,
        "odd key": "v",
    },
)


def check(text: str, event: Event = EVENT, **kw: Any) -> bool:
    """Evaluate compiled and through rule-engine; they must agree."""
    expr = compile_expression(text, lists=LISTS, macros=MACROS, **kw)
    result = expr(event)
    assert isinstance(result, bool)
    assert evaluate_reference(expr, event) == result, text
    return result


def error(text: str, **kw: Any) -> ExprError:
    with pytest.raises(ExprError) as info:
        compile_expression(text, lists=LISTS, macros=MACROS, **kw)
    return info.value


# ---- operators -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('kind == "azure.keyvault" and action == "secretget"', True),
        ('kind == "azure.keyvault" and action == "secretset"', False),
        ('kind != "azure.storage"', True),
        ('action == "a" or outcome == "success"', True),
        ('not (action == "secretget")', False),
        ("raw.properties.httpStatusCode == 403", True),
        ("raw.properties.httpStatusCode == 403.0", True),
        ('raw.properties.httpStatusCode == "403"', False),
        ("raw.properties.httpStatusCode != 403", False),
        ("raw.properties.httpStatusCode >= 400", True),
        ("raw.properties.httpStatusCode < 400", False),
        ("raw.properties.ratio <= 0.5 and raw.properties.ratio > 0.25", True),
        ('action < "z" and action > "a"', True),
        ('time > d"2025-01-01T00:00:00Z"', True),
        ("raw.properties.flag == true", True),
        ("raw.properties.flag == 1", False),
        ("node.attested", True),
        ("node.attested == true and not node.measurement", True),
        ('action in ["secretget", "secretlist"]', True),
        ('action not in ["secretget", "secretlist"]', False),
        ('action in {"secretget"}', True),
        ("actor.id in lists.admins", True),
        ('"get" in action', True),
        ('"a" in raw.tags', True),
        ('"c" in raw.tags', False),
        ('"properties" in raw', True),
        ('"env" in labels', True),
        ("raw.tags == ['a', 'b']", True),
        ("raw.properties.httpStatusCode in [401, 403]", True),
        ('action =~ "secret"', True),
        ('action =~ "get"', False),
        ('action =~~ "get$"', True),
        ('action !~ "get"', True),
        ('action !~~ "get"', False),
        ('action =~ "(?i)SECRET"', True),
        ('raw.nothing ?? "dflt" == "dflt"', True),
        ('raw.properties.statusCode ?? "x" == "Forbidden"', True),
        ('(action == "secretget" ? "yes" : "no") == "yes"', True),
        ('raw["properties"]["statusCode"] == "Forbidden"', True),
        ('raw["odd key"] == "v"', True),
        ('raw.items[1].name == "y"', True),
        ('raw.items[-1]["name"] == "y"', True),
        ("raw.items[5] == null", True),
        ('raw[action] == null and labels["env"] == "prod"', True),
        ('labels.env == "prod"', True),
        ('resource.type == "microsoft.keyvault/vaults"', True),
    ],
)
def test_operators(text: str, expected: bool) -> None:
    assert check(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cidr_match(actor.ip, lists.corp)", True),
        ('cidr_match(actor.ip, "192.168.0.0/16")', False),
        ('cidr_match(actor.ip, ["192.168.0.0/16", "10.1.0.0/16"])', True),
        ('cidr_match("2001:db8::1", lists.corp)', True),
        ('cidr_match("::ffff:10.0.0.1", lists.corp)', True),
        ('cidr_match("10.0.0.1:443", lists.corp)', False),
        ("cidr_match(raw.missing, lists.corp)", False),
        ('lower(actor.name) == "alice"', True),
        ('upper(actor.name) == "ALICE"', True),
        ("lower(raw.missing) == null", True),
        ('startswith(resource.type, "microsoft.keyvault/")', True),
        ('startswith(resource.type, ["a", "microsoft."])', True),
        ("startswith(resource.id, lists.vm_prefixes)", True),
        ('endswith(action, "get")', True),
        ('endswith(action, ["set", "list"])', False),
        ('startswith(raw.missing, "x")', False),
        ('contains(action, "cret")', True),
        ('contains(raw.tags, "b")', True),
        ('contains(raw.properties, "flag")', True),
        ('contains(raw.missing, "x")', False),
        ("contains(lists.admins, actor.id)", True),
        ('regex(raw.properties.statusCode, "(?i)forbid")', True),
        ('regex(raw.missing, "x")', False),
        ("len(raw.tags) == 2 and len(action) == 9 and len(raw.properties) == 4", True),
        ("len(raw.missing) == null", True),
    ],
)
def test_functions(text: str, expected: bool) -> None:
    assert check(text) is expected


def test_null_semantics() -> None:
    bare = ev()
    assert check('raw.x == "y"', bare) is False
    assert check("raw.x == null", bare) is True
    assert check("raw.a.b.c == null", bare) is True
    assert check("raw.nothing.deeper == null") is True
    assert check("raw.tags.name == null") is True  # a dotted step through an array is null
    assert check("actor.ip == null", bare) is True
    assert check("raw.x > 3", bare) is False  # ordering against null is false, not an error
    assert check("not (raw.x > 3)", bare) is True
    assert check('"a" in raw.x', bare) is False
    assert check("raw.x in ['a', null]", bare) is True
    assert check('raw.x =~ "a"', bare) is False
    assert check('raw.x !~ "a"', bare) is True
    assert check("raw.empty", EVENT) is False  # an empty mapping is false
    assert check("raw.tags and labels", EVENT) is True


@pytest.mark.parametrize(
    "text",
    [
        "raw.properties.statusCode > 3",  # string against number
        "raw.tags > raw.tags",  # arrays cannot be ordered
        'lower(raw.properties.httpStatusCode) == "x"',
        'raw.properties.httpStatusCode =~ "4"',
        'startswith(raw.properties.httpStatusCode, "4")',
        "cidr_match(raw.properties.httpStatusCode, lists.corp)",
        'raw.properties.httpStatusCode in "403"',
        'raw.tags["x"] == 1',
        "len(raw.properties.httpStatusCode) == 1",
        "3 in raw.properties.httpStatusCode",
    ],
)
def test_runtime_faults_raise(text: str) -> None:
    expr = compile_expression(text, lists=LISTS)
    with pytest.raises(RuleRuntimeError):
        expr(EVENT)
    with pytest.raises(RuleRuntimeError):
        evaluate_reference(expr, EVENT)


def test_fault_is_not_no_match() -> None:
    expr = compile_expression('kind == "azure.keyvault" and lower(raw.n) == "x"')
    assert expr(ev(raw={"n": "X"})) is True
    assert expr(ev(raw={})) is False
    with pytest.raises(RuleRuntimeError, match="lower"):
        expr(ev(raw={"n": 7}))


# ---- load-time errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "offset"),
    [
        ('action == "a" and', "E120", 17),
        ('action == "a" @ kind', "E120", 14),
        ('action === "a"', "E120", 9),
        ('actor.colour == "x"', "E121", 0),
        ('kind == "a" and foo == "b"', "E121", 16),
        ('kind.x == "a"', "E121", 0),
        ('actor == "x"', "E121", 0),
        ('labels.a.b == "x"', "E121", 0),
        ('kind == "a" and not undefined_macro', "E123", 20),
        ("actor.ip in lists.nope", "E122", 12),
        ("lists == 1", "E122", 0),
        ("action > 5", "E124", 0),
        ("kind == 5", "E124", 0),
        ("actor.ip in lists.corp", "E124", 12),
        ("lower(node.attested) == 'x'", "E124", 6),
        ('kind == "a" and regex(action, "(a)\\\\1")', "E125", 30),
        ('action =~ "(?<=a)b"', "E125", 10),
        ("action =~ raw.pattern", "E125", 0),
        ("regex(action, raw.p)", "E125", 14),
        ('kind == "a" and foo(action)', "E127", 16),
        ("lower(action, 1) == 'a'", "E127", 0),
        ("$now > time", "E127", 0),
        ("lower == 'a'", "E127", 0),
        ("cidr_match(actor.ip, lists.admins)", "E127", 21),
        ('"abc".length == 3', "E124", 0),
        ('kind == "a" and d"2025-01-01".hour == 3', "E124", 16),
        ("cidr_match(actor.ip, raw.net)", "E127", 21),
        ('cidr_match(actor.ip, "10.0.0.0/33")', "E128", 21),
        ('cidr_match(actor.ip, ["10.0.0.0/8", "nope"])', "E128", 36),
    ],
)
def test_load_errors(text: str, code: str, offset: int | None) -> None:
    exc = error(text)
    assert (exc.code, exc.offset) == (code, offset), exc
    assert exc.message


def test_bad_regex_offset_points_at_the_literal() -> None:
    text = r'kind == "x" and action =~ "(a)\\1"'
    exc = error(text)
    assert exc.code == "E125" and text[exc.offset or 0 :].startswith('"(a)')
    assert "backreference" in exc.message or "escape" in exc.message


def test_errors_inside_macros_point_at_the_reference() -> None:
    text = 'outcome == "success" and uses_bad_regex'
    exc = error(text)
    assert (exc.code, exc.offset) == ("E125", text.index("uses_bad_regex"))
    exc = error("kind == 'a' or broken")
    assert (exc.code, exc.offset) == ("E120", 15) and "broken" in exc.message
    with pytest.raises(ExprError) as info:
        compile_expression("kind == 'a' and m", macros={"m": "actor.colour == 'x'"})
    assert (info.value.code, info.value.offset) == ("E121", 16)
    assert "actor.colour" in info.value.message and "in macro 'm'" in info.value.message


def test_macro_cycle_and_shadowing() -> None:
    exc = error("action == 'a' and loop_a")
    assert exc.code == "E123" and exc.offset == 18 and "loop_a -> loop_b -> loop_a" in exc.message
    with pytest.raises(ExprError) as info:
        compile_expression("action == 'a' and kind == 'b'", macros={"kind": "true"})
    assert (info.value.code, info.value.offset) == ("E123", 18)


def test_macro_expansion() -> None:
    expr = compile_expression("external_kv_read", lists=LISTS, macros=MACROS)
    assert expr(ev(actor={"ip": "203.0.113.9"})) is True
    assert expr(ev(actor={"ip": "10.0.0.1"})) is False
    assert expr(ev(kind="azure.storage", actor={"ip": "203.0.113.9"})) is False
    assert expr.fields == {"kind", "action", "actor.ip"}
    # a macro is parenthesised: `not m` negates all of it
    expr = compile_expression("not kv_read", macros=MACROS)
    assert expr(ev(action="secretset")) is True
    # a comment at the end of a macro does not swallow the closing parenthesis
    expr = compile_expression("m and kind == 'azure.keyvault'", macros={"m": "action == 'secretget' # read"})
    assert expr(EVENT) is True


def test_cost_budget_and_length() -> None:
    chain = " or ".join(f'action == "a{i}"' for i in range(80))
    assert error(chain).code == "E126"
    assert compile_expression(chain, cost_budget=10_000).cost > DEFAULT_COST_BUDGET
    assert error("x" * 10_001).code == "E126"
    nested = "len([[y for y in raw.tags] for x in raw.tags]) > 0"
    assert error(nested).code == "E126"
    assert compile_expression("len([x for x in raw.tags if x == 'a']) == 1").cost <= DEFAULT_COST_BUDGET
    assert error(" and ".join(["regex(action, 'a')"] * 20)).code == "E126"
    assert error("not " * 2000 + "kind == 'a'", cost_budget=10**9).code == "E126"  # not a RecursionError
    doubling = {"m0": "action == 'x'", **{f"m{i}": f"m{i - 1} or m{i - 1}" for i in range(1, 30)}}
    with pytest.raises(ExprError, match="expands to more than"):
        compile_expression("m29", macros=doubling)


def test_simple_cost_is_small() -> None:
    assert compile_expression('kind == "a" and action == "b"').cost < 10


# ---- compilation, fallback, fields ---------------------------------------------------------------------


def test_compiled_flag_and_partial_fallback() -> None:
    assert compile_expression('kind == "a"').compiled is True
    expr = compile_expression("raw.properties.httpStatusCode + 1 == 404 and action == 'secretget'")
    assert expr.compiled is False
    assert expr(EVENT) is True and evaluate_reference(expr, EVENT) is True
    expr = compile_expression("[t for t in raw.tags if t != 'a'] == ['b']")
    assert expr.compiled is False and expr(EVENT) is True
    assert check("raw.tags[0:1] == ['a']") is True
    assert check("{'k': action}['k'] == 'secretget'") is True


def test_fields() -> None:
    expr = compile_expression(
        'kind == "a" and raw.properties.statusCode == 1 and raw["x"][0].y == 1 and labels.env == "p" '
        "and cidr_match(actor.ip, lists.corp)",
        lists=LISTS,
    )
    assert expr.fields == {"kind", "raw.properties.statusCode", "raw.x", "labels.env", "actor.ip"}
    assert {"kind", "action", "actor.ip", "resource.type", "node.attested", "raw", "labels"} <= EVENT_FIELDS
    assert not any(f.startswith(("raw.", "labels.")) for f in EVENT_FIELDS)


def test_hints() -> None:
    def hints(text: str) -> tuple[IndexHint, ...]:
        return compile_expression(text, lists=LISTS, macros=MACROS).hints

    assert hints('action == "a" and kind in ["x", "y"]') == (
        IndexHint("action", frozenset({"a"})),
        IndexHint("kind", frozenset({"x", "y"})),
    )
    assert hints('action == "a" or kind == "x"') == ()
    assert hints('startswith(action, "microsoft.keyvault/")') == (
        IndexHint("action", frozenset(), ("microsoft.keyvault/",)),
    )
    assert hints('(action == "a" or action in ["b"]) and outcome == "success"') == (
        IndexHint("action", frozenset({"a", "b"})),
        IndexHint("outcome", frozenset({"success"})),
    )
    assert hints("actor.id in lists.admins") == (IndexHint("actor.id", frozenset({"alice", "bob"})),)
    assert hints("kv_read and not from_corp")[0] == IndexHint("kind", frozenset({"azure.keyvault"}))
    assert hints('not (action == "a")') == ()
    assert hints('action != "a"') == ()
    assert hints('action in "abc"') == ()  # substring, not membership
    assert hints('lower(action) == "a"') == ()


def test_explain() -> None:
    expr = compile_expression(
        '(kind == "azure.keyvault") and lower(raw.n) == "x" and not from_corp # why',
        lists=LISTS,
        macros=MACROS,
    )
    rows = expr.explain(ev(raw={"n": 5}, actor={"ip": "203.0.113.1"}))
    assert rows[0] == ('(kind == "azure.keyvault")', True, None)
    assert rows[1][0] == 'lower(raw.n) == "x"' and rows[1][1] is None and "lower" in (rows[1][2] or "")
    assert rows[2] == ("not from_corp", True, None)
    assert compile_expression("(a_m)", macros={"a_m": "kind == 'x'"}).explain(EVENT) == [("a_m", False, None)]
    one = compile_expression("kind == 'x' ? true : false")
    assert one.explain(EVENT) == [("kind == 'x' ? true : false", False, None)]


def test_re2_is_linear_time() -> None:
    expr = compile_expression('raw.s =~ "^(a+)+$" or regex(raw.s, "^(a+)+$")')
    event = ev(raw={"s": "a" * 30 + "!"})
    start = time.perf_counter()
    assert expr(event) is False
    assert evaluate_reference(expr, event) is False
    assert time.perf_counter() - start < 0.5


def test_regex_syntax_python_re_would_reject_is_fine() -> None:
    assert check(r'action =~~ "\\pL+" and regex(action, "[[:alpha:]]+")') is True


def test_compiled_expr_api() -> None:
    expr = compile_expression("kind == 'azure.keyvault'")
    assert isinstance(expr, CompiledExpr) and expr.text == "kind == 'azure.keyvault'"
    assert "kind" in repr(expr)
    exc = ExprError("E121", "unknown", 3)
    assert (exc.code, exc.message, exc.offset) == ("E121", "unknown", 3)
    assert evaluate_reference("kind == 'azure.keyvault'", EVENT) is True


def test_lazily_decoded_raw() -> None:
    raw = FrozenMap.from_json(b'{"a": {"b": [1, 2]}}')
    lazy = Event(id="x", time=EVENT.time, kind="generic", action="a", raw=raw)
    assert check("raw.a.b[1] == 2 and len(raw.a.b) == 2", lazy) is True


def test_parser_built_from_the_grammar_agrees() -> None:
    """VigilParser reuses rule-engine's LALR tables; built from the grammar docstrings it must parse alike."""
    from rule_engine.parser import Parser  # type: ignore[import-untyped]

    from vigil.rules.expr_ref import EventView, RefContext, VigilParser

    fresh = VigilParser.__new__(VigilParser)
    Parser.__init__(fresh)
    text = 'raw.missing > 1 or (action =~~ "\\\\pL+" and raw["nothing"]["x"] == null and not ("a" in raw.missing))'
    statement = fresh.parse(text, RefContext())
    assert statement.evaluate(EventView(EVENT, {})) is True
    assert check(text) is True

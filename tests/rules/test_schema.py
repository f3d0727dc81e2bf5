"""The rule-language document models: strict types, the accepted YAML forms, and what each one rejects."""

from __future__ import annotations

import doctest
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from vigil.rules import schema
from vigil.rules.schema import (
    AlertSpec,
    LibraryDoc,
    OverlayDoc,
    RemediateSpec,
    RuleDoc,
    document_kind,
    json_schema,
    parse_duration,
)

MINIMAL: dict[str, Any] = {"id": "kv.read", "title": "t", "severity": "high", "match": "true"}


def _rule(**changes: Any) -> RuleDoc:
    return RuleDoc.model_validate(MINIMAL | changes)


def _errors(model: Any, data: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(tuple(e["loc"]), e["type"]) for e in info.value.errors()]


def test_docstring_example_runs() -> None:
    assert doctest.testmod(schema).failed == 0


def test_minimal_rule_gets_defaults() -> None:
    doc = _rule()
    assert doc.status == "experimental"
    assert doc.effective_score == 70 and doc.score is None
    assert doc.kind == [] and doc.tags == [] and doc.actions == [] and doc.tests == []
    assert doc.suppress_delta is None


def test_explicit_score_wins_and_is_bounded() -> None:
    assert _rule(score=12).effective_score == 12
    assert _errors(RuleDoc, MINIMAL | {"score": 101}) == [(("score",), "less_than_equal")]
    assert _errors(RuleDoc, MINIMAL | {"score": "70"}) == [(("score",), "int_type")]
    assert _errors(RuleDoc, MINIMAL | {"score": True}) == [(("score",), "int_type")]


@pytest.mark.parametrize(
    "rule_id", ["kv.read", "kv.secret-read-outside", "a1.b2_c3", "storage.anonymous-blob-read"]
)
def test_valid_ids(rule_id: str) -> None:
    assert _rule(id=rule_id).id == rule_id


@pytest.mark.parametrize("rule_id", ["kv", "KV.read", "kv..read", "kv.read.", ".kv", "kv read", "kv/read"])
def test_invalid_ids(rule_id: str) -> None:
    assert _errors(RuleDoc, MINIMAL | {"id": rule_id}) == [(("id",), "string_pattern_mismatch")]


def test_kind_is_one_or_a_list_of_known_kinds() -> None:
    assert _rule(kind="azure.keyvault").kind == ["azure.keyvault"]
    assert _rule(kind=["azure.keyvault", "azure.activity"]).kind == ["azure.keyvault", "azure.activity"]
    assert _errors(RuleDoc, MINIMAL | {"kind": ["azure.keyvault", "azure.nope"]}) == [
        (("kind", 1), "value_error")
    ]


def test_tags_lower_case_and_attack_tags_well_formed() -> None:
    tags = ["attack.t1552", "attack.t1552.001", "attack.credential_access", "attack.g0016", "cloud"]
    assert _rule(tags=tags).tags == tags
    assert _errors(RuleDoc, MINIMAL | {"tags": ["attack.T1552"]}) == [
        (("tags", 0), "string_pattern_mismatch")
    ]
    assert _errors(RuleDoc, MINIMAL | {"tags": ["ok", "attack.credential-access"]}) == [
        (("tags", 1), "value_error")
    ]


def test_status_and_severity_are_closed_sets() -> None:
    assert _errors(RuleDoc, MINIMAL | {"status": "beta"}) == [(("status",), "literal_error")]
    assert _errors(RuleDoc, MINIMAL | {"severity": "urgent"}) == [(("severity",), "literal_error")]


def test_required_keys_and_unknown_keys() -> None:
    errors = _errors(RuleDoc, {"id": "kv.read", "titel": "x"})
    assert sorted(errors) == [  # a missing match is reported by the builder (only sequences omit it)
        (("severity",), "missing"),
        (("titel",), "extra_forbidden"),
        (("title",), "missing"),
    ]


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
    ],
)
def test_durations(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta
    assert _rule(suppress=text).suppress_delta == delta


@pytest.mark.parametrize("text", ["", "0s", "30", "30 minutes", "1.5h", "m", "30m1h", "-5m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_actions_alert_and_remediate_forms() -> None:
    doc = _rule(
        actions=[
            {"alert": "console"},
            {"alert": ["pagerduty", "teams"]},
            {"remediate": "rotate_key"},
            {
                "remediate": "quarantine_vm",
                "target": "{{ resource.id }}",
                "approval": "auto",
                "params": {"nsg": "deny-all"},
            },
        ]
    )
    alert1, alert2, rem1, rem2 = doc.actions
    assert isinstance(alert1, AlertSpec) and alert1.alert == ["console"]
    assert isinstance(alert2, AlertSpec) and alert2.alert == ["pagerduty", "teams"]
    assert isinstance(rem1, RemediateSpec)
    assert (rem1.target, rem1.approval, rem1.params) == ("{{ resource.id }}", "required", {})
    assert isinstance(rem2, RemediateSpec) and rem2.approval == "auto" and rem2.params == {"nsg": "deny-all"}


def test_action_errors() -> None:
    actions = [
        {"alert": ["pagerduty", "pigeon"]},
        {"remediate": "reboot"},
        {"page": "oncall"},
        {"alert": "console", "remediate": "rotate_key"},
        {"remediate": "rotate_key", "approval": "sometimes"},
        {"alert": []},
    ]
    errors = _errors(RuleDoc, MINIMAL | {"actions": actions})
    assert errors == [
        (("actions", 0, "alert-action", "alert", 1), "literal_error"),
        (("actions", 1, "remediate-action", "remediate"), "literal_error"),
        (("actions", 2), "unknown_action"),
        (("actions", 3), "unknown_action"),
        (("actions", 4, "remediate-action", "approval"), "literal_error"),
        (("actions", 5, "alert-action", "alert"), "too_short"),
    ]


def test_test_cases_need_exactly_one_input_and_an_expectation() -> None:
    ok = {"name": "n", "events": [{"action": "x"}], "expect": {"findings": 1}}
    assert _rule(tests=[ok]).tests[0].expect.findings == 1
    records = {"name": "n", "records": [{"a": 1}], "expect": {"findings": 0}}
    assert _rule(tests=[records]).tests[0].records == [{"a": 1}]
    both = ok | {"records": [{"a": 1}]}
    neither = {"name": "n", "expect": {"findings": 0}}
    assert _errors(RuleDoc, MINIMAL | {"tests": [both, neither]}) == [
        (("tests", 0), "value_error"),
        (("tests", 1), "value_error"),
    ]
    assert _errors(RuleDoc, MINIMAL | {"tests": [ok | {"expect": {"findings": -1}}]}) == [
        (("tests", 0, "expect", "findings"), "greater_than_equal")
    ]


def test_stateful_forms_are_strict() -> None:
    doc = _rule(threshold={"count": 20, "window": "5m", "group_by": ["actor.ip"]})
    assert doc.threshold is not None and doc.threshold.bounds == (20.0, None) and doc.form == "threshold"
    assert _errors(RuleDoc, MINIMAL | {"threshold": 20}) == [(("threshold",), "model_type")]
    assert (("threshold", "for"), "extra_forbidden") in _errors(
        RuleDoc, MINIMAL | {"threshold": {"count": 2, "window": "1m", "for": 1}}
    )
    two = _errors(
        RuleDoc, MINIMAL | {"threshold": {"count": 2, "window": "1m"}, "flatline": {"period": "1m"}}
    )
    assert two == [((), "value_error")]


def test_library_list_forms() -> None:
    doc = LibraryDoc.model_validate(
        {
            "lists": {"plain": ["a", "b"], "nets": {"cidr": ["10.0.0.0/8"]}, "long": {"values": ["c"]}},
            "macros": {"succeeded": 'outcome == "success"'},
        }
    )
    assert doc.lists["plain"] == ["a", "b"]
    assert doc.macros == {"succeeded": 'outcome == "success"'}
    errors = _errors(
        LibraryDoc, {"lists": {"bad-name": ["a"], "n": {"cidrs": ["x"]}, "m": [1]}, "macros": {"x": ""}}
    )
    assert errors == [
        (("lists", "bad-name", "[key]"), "string_pattern_mismatch"),
        (("lists", "n"), "list_form"),
        (("lists", "m", "plain-list", 0), "string_type"),
        (("macros", "x"), "string_too_short"),
    ]


def test_overlay_append_or_replace_exactly() -> None:
    doc = OverlayDoc.model_validate({"overlay": {"lists": {"a": {"append": ["x"]}, "b": {"replace": []}}}})
    assert doc.overlay.lists["a"].append == ["x"] and doc.overlay.lists["b"].replace == []
    errors = _errors(OverlayDoc, {"overlay": {"lists": {"a": {"append": ["x"], "replace": ["y"]}, "b": {}}}})
    assert errors == [(("overlay", "lists", "a"), "value_error"), (("overlay", "lists", "b"), "value_error")]


def test_document_kind() -> None:
    assert document_kind({"id", "title"}) == "rule"
    assert document_kind({"match"}) == "rule"
    assert document_kind({"lists"}) == "library"
    assert document_kind({"lists", "macros"}) == "library"
    assert document_kind({"macros"}) == "library"
    assert document_kind({"overlay"}) == "overlay"
    assert document_kind({"title"}) is None


def test_json_schema_for_editors() -> None:
    js = json_schema()
    assert js["additionalProperties"] is False
    assert set(js["required"]) == {"id", "title", "severity"}
    assert "pagerduty" in str(js)

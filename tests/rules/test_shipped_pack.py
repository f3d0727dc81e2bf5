"""The shipped rule pack: loads clean, lints clean, every case passes, and compiled == rule-engine on every case."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.rules.diagnostics import has_errors
from vigil.rules.expr import RuleRuntimeError
from vigil.rules.lint import lint
from vigil.rules.loader import load_rules
from vigil.rules.model import RuleSet
from vigil.rules.testing import run_tests

PACK = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture(scope="module")
def pack() -> RuleSet:
    return load_rules([PACK])


def test_pack_loads_and_lints_without_errors(pack: RuleSet) -> None:
    assert pack.ok, [d.format() for d in pack.diagnostics]
    assert not has_errors(lint(pack)), [d.format() for d in lint(pack) if d.severity == "error"]
    assert len(pack.rules) >= 30


def test_every_rule_has_cases_and_all_pass(pack: RuleSet) -> None:
    results = run_tests(pack)
    failed = [r.describe() for r in results if not r.passed]
    assert not failed, failed
    for rule in pack.rules:
        expects = [case.expect_findings for case in rule.tests]
        assert any(e > 0 for e in expects) and any(e == 0 for e in expects), rule.id


def test_compiled_expressions_equal_rule_engine_on_every_case_event(pack: RuleSet) -> None:
    checked = 0
    for rule in pack.rules:
        for case in rule.tests:
            for event in case.events:
                try:
                    compiled: object = rule.expr(event)
                except RuleRuntimeError:
                    compiled = "fault"
                try:
                    reference: object = rule.expr.reference(event)
                except RuleRuntimeError:
                    reference = "fault"
                assert compiled == reference, (rule.id, case.name, event.id)
                checked += 1
    assert checked > 100


def test_every_rule_is_tagged_and_stable_auto_only(pack: RuleSet) -> None:
    for rule in pack.rules:
        assert any(t.startswith("attack.") for t in rule.tags), rule.id
        for action in rule.actions:
            if getattr(action, "approval", None) == "auto":
                assert rule.status == "stable", rule.id

"""``vigil rules test``: run every rule's embedded test cases through the engine the daemon uses.

All rules are loaded into one :class:`~vigil.detectors.engine.Detector`, exactly as the daemon loads them,
and each case's events are processed in the order given, from empty state (windows, sequences, flatlines
and suppression start fresh for every case); then, when the case says ``advance: 10m``, event time moves
that far past the last event so timers can fire. The case counts the findings of its own rule. So a case
also proves that the index files the rule where events of that kind and action will find it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vigil.detectors.engine import Detector
from vigil.rules.model import Rule, RuleSet, RuleTest


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one test case."""

    rule_id: str
    case: str
    expected: int
    actual: int
    errors: int
    path: str = ""
    line: int = 0

    @property
    def passed(self) -> bool:
        return self.errors == 0 and self.expected == self.actual

    def describe(self) -> str:
        """``path:line: FAIL rule :: case: expected N findings, got M (K rule errors)``."""
        where = f"{self.path}:{self.line}: " if self.path else ""
        status = "ok" if self.passed else "FAIL"
        text = f"{where}{status} {self.rule_id} :: {self.case}: "
        text += f"expected {self.expected} findings, got {self.actual}"
        if self.errors:
            text += f" ({self.errors} rule errors at run time)"
        return text


def run_case(detector: Detector, rule: Rule, case: RuleTest) -> CaseResult:
    """Process the case's events from empty state and count the findings of ``rule``."""
    detector.reset()
    errors = detector.matcher.errors
    before = _errors_of(errors, rule.id)
    found = 0
    for event in case.events:
        found += sum(1 for f in detector.process(event) if f.rule == rule.id)
    if case.advance is not None:
        found += sum(1 for f in detector.advance(case.advance) if f.rule == rule.id)
    return CaseResult(
        rule_id=rule.id,
        case=case.name,
        expected=case.expect_findings,
        actual=found,
        errors=_errors_of(errors, rule.id) - before,
        path=rule.path,
        line=case.line or rule.line,
    )


def _errors_of(errors: Mapping[str, int], rule_id: str) -> int:
    """Run-time faults of a rule, its sequence steps (``<id>#<n>``) included."""
    return sum(n for rid, n in errors.items() if rid == rule_id or rid.startswith(f"{rule_id}#"))


def run_tests(ruleset: RuleSet, rule_ids: set[str] | None = None) -> list[CaseResult]:
    """Every case of every rule (or of the rules named in ``rule_ids``), in file order."""
    detector = Detector(ruleset.rules)
    results: list[CaseResult] = []
    for rule in ruleset.rules:
        if rule_ids is not None and rule.id not in rule_ids:
            continue
        results += [run_case(detector, rule, case) for case in rule.tests]
    return results

"""``vigil rules lint``: the checks beyond validity, over the rules a load accepted.

:func:`lint` returns only its own findings; the command prints them after the loader's diagnostics
(``ruleset.diagnostics``), which already hold every validity error. What is an error and what a warning:

* **E135 / E136** — a rule without a positive case (one expecting findings) or without a negative case (one
  expecting none). The rule language demands both ("lint demands at least one positive and one negative test
  case"), so lint fails on them; they are errors of lint only: the loader accepts such a rule, so a rule
  under construction can still be run and tested. (W200/W201 keep their meaning in the code table but are
  not emitted: the command would otherwise print each missing case twice.)
* **E131** — ``approval: auto`` on a rule whose status is not ``stable``. The loader already rejects such a
  rule (an unstable rule must never remediate unattended), so lint sees it only in a rule set built by
  other means; the check stays here as the second line of defence.
* **W202** no ``attack.*`` tag, **W203** ``score`` more than 30 away from the severity's default, **W204** no
  index hint on ``action`` (the matcher evaluates the rule against every event of its kinds), **W205** no
  ``kind`` (the rule sees every event); a sequence rule is checked step by step (W204/W205 name the step).
  Warnings fail only ``--strict``, which the caller applies: the diagnostics are the same either way.

Example::

    >>> from vigil.rules.loader import load_rules
    >>> [d.code for d in lint(load_rules(["tests/fixtures/rules/good"]))]
    []
"""

from __future__ import annotations

import dataclasses

from vigil.rules.diagnostics import Diagnostic, sort_key
from vigil.rules.model import SEVERITY_SCORE, RemediateAction, Rule, RuleSet

#: how far a score may stray from its severity's default before lint asks why (W203)
SCORE_TOLERANCE = 30


def lint(ruleset: RuleSet, *, strict: bool = False) -> list[Diagnostic]:
    """Lint diagnostics of every rule of ``ruleset``, sorted by file and position.

    ``strict`` does not change the diagnostics (a warning stays a warning); the command fails on warnings
    when it is set.
    """
    del strict  # applied by the caller, see the docstring
    out: list[Diagnostic] = []
    for rule in ruleset.rules:
        out += lint_rule(rule)
    return sorted(out, key=sort_key)


def with_warnings(ruleset: RuleSet) -> RuleSet:
    """``ruleset`` carrying lint's warnings among its diagnostics (what a running daemon shows in
    ``/v1/rules``: no ATT&CK tag, not indexable...). Lint's errors are left out: the set was accepted."""
    warnings = tuple(d for d in lint(ruleset) if d.severity == "warning")
    return dataclasses.replace(ruleset, diagnostics=ruleset.diagnostics + warnings)


def lint_rule(rule: Rule) -> list[Diagnostic]:
    """The lint diagnostics of one rule, located at the rule's first line."""

    def diag(code: str, message: str) -> Diagnostic:
        return Diagnostic(code, message, rule.path, rule.line, 1, rule.id)

    out: list[Diagnostic] = []
    if not any(case.expect_findings > 0 for case in rule.tests):
        out.append(diag("E135", "no positive test case: add one whose expect is {findings: 1} or more"))
    if not any(case.expect_findings == 0 for case in rule.tests):
        out.append(diag("E136", "no negative test case: add one whose expect is {findings: 0}"))
    for action in rule.actions:
        if isinstance(action, RemediateAction) and action.approval == "auto" and rule.status != "stable":
            message = (
                f"remediate {action.remediation}: approval: auto requires status: stable, not {rule.status}"
            )
            out.append(diag("E131", message))
    if not any(tag.startswith("attack.") for tag in rule.tags):
        out.append(diag("W202", "no MITRE ATT&CK tag (attack.<tactic> or attack.tNNNN)"))
    default = SEVERITY_SCORE[rule.severity]
    if abs(rule.score - default) > SCORE_TOLERANCE:
        message = f"score {rule.score} is far from the {rule.severity} default {default}: check the severity"
        out.append(diag("W203", message))
    # a sequence is judged by its steps (each is indexed on its own); a step naming a rule has none
    steps = [s for s in rule.sequence.steps if s.expr is not None] if rule.sequence else []
    filters = [(s.name + ": ", s.expr, s.kinds) for s in steps] if steps else [("", rule.expr, rule.kinds)]
    for where, expr, kinds in filters:
        if expr is not None and not any(hint.field == "action" for hint in expr.hints):
            message = "not indexable: no top-level action ==/in/startswith clause; evaluated on every event"
            out.append(diag("W204", where + message))
        if not kinds:
            out.append(diag("W205", where + "no kind: evaluated against every event of every source"))
    return out

"""What a loaded rule set is: validated, compiled rules ready for the matcher, plus their lists and macros.

The loader (``loader.py``) turns YAML documents into these values; the matcher (``detectors/match.py``), the
test runner (``testing.py``) and ``vigil replay`` consume them. They are immutable, so a hot reload swaps a
whole :class:`RuleSet` at once and the last good set keeps running while a bad one is rejected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from vigil.events.model import Event
from vigil.rules.diagnostics import Diagnostic, has_errors

if TYPE_CHECKING:
    from vigil.rules.expr import CompiledExpr

Status = Literal["experimental", "test", "stable"]
RuleSeverity = Literal["informational", "low", "medium", "high", "critical"]
Approval = Literal["required", "auto"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: default score of each severity, when a rule gives none
SEVERITY_SCORE: Mapping[str, int] = {"informational": 10, "low": 30, "medium": 50, "high": 70, "critical": 90}


@dataclass(frozen=True, slots=True)
class ListDef:
    """A named list from a ``lists:`` document: plain values, or networks when ``kind`` is ``cidr``."""

    name: str
    kind: Literal["values", "cidr"]
    values: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()
    path: str = ""
    line: int = 0


@dataclass(frozen=True, slots=True)
class AlertAction:
    """``- alert: [pagerduty, teams]``"""

    sinks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemediateAction:
    """``- remediate: rotate_key`` with its target template, approval mode and parameters."""

    remediation: str
    target: str
    approval: Approval = "required"
    params: Mapping[str, object] = field(default_factory=dict)


Action = AlertAction | RemediateAction


@dataclass(frozen=True, slots=True)
class RuleTest:
    """One embedded test case: events in, the number of findings expected out."""

    name: str
    events: tuple[Event, ...]
    expect_findings: int
    line: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated, compiled rule. ``content_hash`` identifies the exact rule text a finding came from."""

    id: str
    title: str
    status: Status
    severity: RuleSeverity
    score: int
    kinds: frozenset[str]  # empty: every kind
    expr: CompiledExpr
    description: str = ""
    tags: tuple[str, ...] = ()
    suppress: timedelta | None = None
    actions: tuple[Action, ...] = ()
    tests: tuple[RuleTest, ...] = ()
    references: tuple[str, ...] = ()
    author: str = ""
    falsepositives: tuple[str, ...] = ()
    path: str = ""
    line: int = 0
    content_hash: str = ""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Everything loaded from a set of rule files, with every diagnostic found on the way."""

    rules: tuple[Rule, ...] = ()
    lists: Mapping[str, ListDef] = field(default_factory=dict)
    macros: Mapping[str, str] = field(default_factory=dict)
    diagnostics: tuple[Diagnostic, ...] = ()
    #: hash over every rule's content hash: changes whenever any rule changes
    hash: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing is an error (warnings allowed)."""
        return not has_errors(self.diagnostics)

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

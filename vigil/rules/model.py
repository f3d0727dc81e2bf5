"""What a loaded rule set is: validated, compiled rules ready for the matcher, plus their lists and macros.

The loader (``loader.py``) turns YAML documents into these values; the matcher (``detectors/match.py``), the
test runner (``testing.py``) and ``vigil replay`` consume them. They are immutable, so a hot reload swaps a
whole :class:`RuleSet` at once and the last good set keeps running while a bad one is rejected.
"""

from __future__ import annotations

import dataclasses
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
    dry_run: bool = False
    max_targets: int | None = None
    max_percent: float | None = None


Action = AlertAction | RemediateAction


@dataclass(frozen=True, slots=True)
class RuleTest:
    """One embedded test case: events in (in the order given; their times drive stateful rules), then the
    clock moved ``advance`` past the last event (so flatlines and absent steps can fire), and the number of
    findings expected out."""

    name: str
    events: tuple[Event, ...]
    expect_findings: int
    line: int = 0
    advance: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Threshold:
    """``threshold:``: an aggregate (``count``, ``distinct`` values of ``field``, ``sum`` of ``field``)
    per ``group_by`` group over a sliding ``window``, checked against ``at_least`` / ``at_most``."""

    measure: Literal["count", "distinct", "sum"]
    window: timedelta
    at_least: float | None = None
    at_most: float | None = None
    field: str | None = None
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a sequence: its own compiled ``match`` (the rule's ``match`` ANDed in) with its kinds, or
    the id of another rule whose findings it waits for; ``by`` are the fields that join it to the others."""

    name: str
    by: tuple[str, ...]
    expr: CompiledExpr | None = None
    kinds: frozenset[str] = frozenset()
    rule_id: str | None = None
    absent: bool = False
    line: int = 0
    col: int = 0


@dataclass(frozen=True, slots=True)
class Sequence:
    """``sequence:``: ``steps`` in order, joined by their ``by`` fields, all ``within`` of the first."""

    within: timedelta
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Flatline:
    """``flatline:``: a ``group_by`` group seen before has had no matching event for ``period``."""

    period: timedelta
    expire: timedelta
    group_by: tuple[str, ...] = ()


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
    threshold: Threshold | None = None
    sequence: Sequence | None = None
    flatline: Flatline | None = None

    @property
    def form(self) -> Literal["event", "threshold", "sequence", "flatline"]:
        """``event`` for a single-event rule, else the stateful form."""
        if self.threshold is not None:
            return "threshold"
        if self.sequence is not None:
            return "sequence"
        return "flatline" if self.flatline is not None else "event"

    def step_filter(self, i: int) -> Rule:
        """Step ``i`` of a sequence as a rule of its own (its match and kinds, id ``<id>#<i>``): how the
        detector indexes a step and how ``rules explain`` shows one."""
        assert self.sequence is not None
        step = self.sequence.steps[i]
        assert step.expr is not None, "a step that names a rule has no filter of its own"
        return dataclasses.replace(self, id=f"{self.id}#{i}", expr=step.expr, kinds=step.kinds)

    @property
    def group_by(self) -> tuple[str, ...]:
        """The fields a finding of this rule is grouped (and suppressed) by; () means the default group
        of a single-event finding: the resource, else the training node."""
        if self.threshold is not None:
            return self.threshold.group_by
        if self.sequence is not None:
            return self.sequence.steps[0].by
        return self.flatline.group_by if self.flatline is not None else ()


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

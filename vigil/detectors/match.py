"""The single-event matcher: rules indexed by kind and action, so an event meets only its candidate rules.

Peers evaluate every rule against every event, so their cost grows with the rule count
(reference/performance.md §3). Here each rule is filed under the kinds it declares and, when its expression
requires ``action`` to equal one of some values or to start with one of some prefixes (the compiler extracts
these *hints* from top-level ``and`` chains), under those values or prefixes. An event looks up its kind,
then its action: one dict hit for the exact values, one per distinct prefix length for the prefixes. Rules
with no usable hint are evaluated for every event of their kinds (lint warns, W204).

A rule that raises :class:`~vigil.rules.expr.RuleRuntimeError` on an event (a real fault, such as ordering a
string against a number) is counted in :attr:`Matcher.errors` per rule and is never taken as "no match"
silently; the other rules still see the event.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final

import msgspec

from vigil.events.model import Event, FrozenMap
from vigil.rules.expr import RuleRuntimeError
from vigil.rules.model import Rule

log = logging.getLogger(__name__)

_ALL_KINDS: Final = ""
_NO_GROUP: Final[Mapping[str, str]] = FrozenMap({})


class Finding(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A rule matched. ``rule_hash`` is the hash of the exact rule text, so every finding is explainable."""

    rule: str
    title: str
    severity: str
    score: int
    event_ids: tuple[str, ...]
    time: datetime
    group: Mapping[str, str] = _NO_GROUP
    rule_hash: str = ""


def group_of(event: Event) -> Mapping[str, str]:
    """The group a single-event finding belongs to: the resource it is about, when there is one."""
    rid = event.resource.id
    return FrozenMap({"resource.id": rid}) if rid else _NO_GROUP


class _KindIndex:
    __slots__ = ("exact", "prefix_lengths", "prefixes", "rest")

    def __init__(self) -> None:
        self.exact: dict[str, list[Rule]] = {}
        self.prefixes: dict[str, list[Rule]] = {}
        self.prefix_lengths: tuple[int, ...] = ()
        self.rest: list[Rule] = []


class Matcher:
    """Evaluates a rule set against events through the kind/action index."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.errors: Counter[str] = Counter()
        self._index: dict[str, _KindIndex] = {}
        self.unindexed: list[str] = []
        for rule in self.rules:
            self._add(rule)
        for ki in self._index.values():
            ki.prefix_lengths = tuple(sorted({len(p) for p in ki.prefixes}))
        self._all = self._index.get(_ALL_KINDS)

    def _add(self, rule: Rule) -> None:
        action_hint = next((h for h in rule.expr.hints if h.field == "action"), None)
        if action_hint is None:
            self.unindexed.append(rule.id)
        for kind in rule.kinds or (_ALL_KINDS,):
            ki = self._index.setdefault(kind, _KindIndex())
            if action_hint is None:
                ki.rest.append(rule)
                continue
            for value in action_hint.values:
                ki.exact.setdefault(value, []).append(rule)
            for prefix in action_hint.prefixes:
                ki.prefixes.setdefault(prefix, []).append(rule)

    def candidates(self, event: Event) -> list[Rule]:
        """The rules that may match ``event``; every other rule is certain not to."""
        out: list[Rule] = []
        for ki in (self._index.get(event.kind), self._all):
            if ki is None:
                continue
            action = event.action
            hit = ki.exact.get(action)
            if hit:
                out += hit
            if ki.prefix_lengths:
                prefixes = ki.prefixes
                for n in ki.prefix_lengths:
                    rules = prefixes.get(action[:n])
                    if rules:
                        out += rules
            if ki.rest:
                out += ki.rest
        if len(out) > 1:
            ids = {id(r): r for r in out}
            if len(ids) != len(out):  # a rule filed under two prefixes that both fit
                out = list(ids.values())
        return out

    def match(self, event: Event) -> list[Finding]:
        """Findings of every rule that matches ``event`` (rule faults are counted, see module docstring)."""
        findings: list[Finding] = []
        for rule in self.candidates(event):
            try:
                if not rule.expr(event):
                    continue
            except RuleRuntimeError:
                self.errors[rule.id] += 1
                continue
            except Exception:  # a bug in a compiled expression: count it, keep the engine running
                self.errors[rule.id] += 1
                log.exception("rule %s failed on event %s", rule.id, event.id)
                continue
            findings.append(
                Finding(
                    rule=rule.id,
                    title=rule.title,
                    severity=rule.severity,
                    score=rule.score,
                    event_ids=(event.id,),
                    time=event.time,
                    group=group_of(event),
                    rule_hash=rule.content_hash,
                )
            )
        return findings

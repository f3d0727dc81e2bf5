"""Shared helpers for the stateful detector tests: rule loading, events at fixed offsets, a fake clock."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vigil.detectors.clock import to_ms
from vigil.detectors.compiled import CountTable
from vigil.detectors.engine import Detector
from vigil.detectors.finding import Finding
from vigil.events.model import Actor, Event, Node, Resource, freeze
from vigil.rules.loader import load_rules
from vigil.rules.model import Rule, RuleSet

#: 2026-01-01T00:00:00Z: a multiple of every window used in the tests, so buckets start exactly here
BASE = datetime(2026, 1, 1, tzinfo=UTC)
BASE_MS = to_ms(BASE)
MINUTE = 60.0

#: both homes of plain count windows: pure Python, and the compiled table (skipped where it is not built)
NATIVE_MODES = [
    pytest.param(False, id="python"),
    pytest.param(
        True,
        id="native",
        marks=pytest.mark.skipif(CountTable is None, reason="compiled window tables not built"),
    ),
]

#: the common head of a test rule (kind generic); append match/threshold/... lines
HEAD = """\
id: {id}
title: {id}
status: test
severity: high
"""


def rule_doc(rule_id: str, body: str) -> str:
    """A rule document: the common head plus ``body`` (YAML lines)."""
    return HEAD.format(id=rule_id) + body


def load(tmp_path: Path, *docs: str, name: str = "rules.yaml") -> RuleSet:
    """Write ``docs`` as one multi-document file and load it; the set must have no errors."""
    path = tmp_path / name
    path.write_text("---\n".join(docs))
    ruleset = load_rules([path])
    assert ruleset.ok, [d.format() for d in ruleset.diagnostics]
    return ruleset


def rules(tmp_path: Path, *docs: str) -> tuple[Rule, ...]:
    return load(tmp_path, *docs).rules


def at(seconds: float) -> datetime:
    """BASE plus ``seconds``."""
    return BASE + timedelta(seconds=seconds)


def ms(seconds: float) -> int:
    """Milliseconds since the epoch of BASE plus ``seconds``."""
    return to_ms(at(seconds))


def ev(
    eid: str,
    seconds: float | datetime,
    *,
    kind: str = "generic",
    action: str = "login",
    outcome: str = "unknown",
    ip: str | None = None,
    actor_id: str | None = None,
    node: str | None = None,
    resource: str | None = None,
    labels: dict[str, str] | None = None,
    raw: dict[str, Any] | None = None,
) -> Event:
    """An event ``seconds`` after BASE (or at a given datetime)."""
    when = seconds if isinstance(seconds, datetime) else at(seconds)
    return Event(
        id=eid,
        time=when,
        kind=kind,
        action=action,
        outcome=outcome,  # type: ignore[arg-type]
        actor=Actor(ip=ip, id=actor_id),
        node=Node(id=node),
        resource=Resource(id=resource),
        labels=freeze(labels),
        raw=freeze(raw),
    )


def feed(detector: Detector, events: Iterable[Event]) -> list[Finding]:
    """Every finding ``events`` cause, in order."""
    out: list[Finding] = []
    for event in events:
        out += detector.process(event)
    return out


def of(findings: Iterable[Finding], rule_id: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule_id]


class FakeTime:
    """A wall clock and a monotonic clock the test moves by hand (and can make disagree)."""

    def __init__(self, wall: float, mono: float = 5_000.0) -> None:
        self.wall_s = wall
        self.mono_s = mono

    def wall(self) -> float:
        return self.wall_s

    def mono(self) -> float:
        return self.mono_s

    def sleep(self, seconds: float) -> None:
        """Time passes normally: both clocks move."""
        self.wall_s += seconds
        self.mono_s += seconds

    def jump_wall(self, seconds: float) -> None:
        """An NTP step or ``date -s``: only the wall clock moves."""
        self.wall_s += seconds


def poison(detector: Detector, event_id: str) -> Detector:
    """Make ``detector.process`` raise ``ZeroDivisionError("a bug")`` on the event ``event_id`` (a bug in
    the engine that shows on one event: reliability A11) and run as usual on every other."""
    real = detector.process

    def process(event: Event) -> list[Finding]:
        if event.id == event_id:
            raise ZeroDivisionError("a bug")
        return real(event)

    detector.process = process  # type: ignore[method-assign]
    return detector

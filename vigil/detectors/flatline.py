"""``flatline`` rules: a group that was seen before has had no matching event for ``period``.

Each group keeps one packed int: the event time it was last seen, shifted left one bit, with the low bit set
once it has fired. An event at exactly ``last + period`` is still in time. When the watermark passes
(is later than) ``last + period`` for a group that has not fired, a finding
fires (its time is ``last + period``, its group the silent group); the group fires again only after it has
been seen again and gone silent again. Groups not seen for ``expire`` are forgotten.

A group that has never been seen cannot flatline: Vigil cannot know what it has never heard from. The
scan for due groups runs only when the earliest due time has passed, so a healthy fleet costs one
comparison per event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from vigil.detectors.clock import from_ms
from vigil.detectors.finding import Finding, finding, group_from_key, key_function
from vigil.detectors.state import KeyedState, Packed, WindowState
from vigil.events.model import Event
from vigil.rules.model import Rule

NO_TIMER: Final = 1 << 62


class FlatlineDetector:
    """One flatline rule's last-seen times (see module docstring)."""

    def __init__(self, rule: Rule, limit: int) -> None:
        spec = rule.flatline
        assert spec is not None
        self.rule = rule
        self.fields = spec.group_by
        self.key_of = key_function(spec.group_by)
        self.period = int(spec.period.total_seconds() * 1000)
        self.expire = int(spec.expire.total_seconds() * 1000)
        self.state: WindowState = KeyedState(limit)
        self.next_due = NO_TIMER

    def on_event(self, event: Event, t: int, out: list[Finding]) -> None:
        key = self.key_of(event)
        st = self.state.get(key)
        if (st is None or (type(st) is int and t > st >> 1)) and self.state.put(key, t << 1):
            self.next_due = min(self.next_due, t + self.period + 1)

    def due(self, watermark: int, out: list[Finding]) -> None:
        if watermark < self.next_due:
            return
        self.next_due = NO_TIMER
        fired: list[tuple[str, int]] = []
        for key, st in self.state.items():
            assert type(st) is int
            if st & 1:
                continue
            deadline = (st >> 1) + self.period
            if deadline < watermark:
                fired.append((key, st | 1))
                out.append(finding(self.rule, (), from_ms(deadline), group_from_key(self.fields, key)))
            else:
                self.next_due = min(self.next_due, deadline + 1)
        for key, st in fired:
            self.state.put(key, st)

    @property
    def granularity(self) -> int:
        return self.period

    def dead(self, watermark: int) -> Callable[[Packed], bool]:
        expire = self.expire
        return lambda st: type(st) is int and (st >> 1) + expire < watermark

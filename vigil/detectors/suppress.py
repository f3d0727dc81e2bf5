"""``suppress:``: one finding per (rule, group) per period, with the suppressed count carried forward.

The first finding of a group passes and opens a period of ``suppress`` (event time); findings of the same
rule and group inside it are counted, not emitted. The next finding after the period carries that count
in ``suppressed``, so nothing is lost from view: "fired again, and 41 more times since the last alert".
State is one packed int per (rule, group) — period end in the high bits, count in the low 32 — in the same
sharded, bounded :class:`~vigil.detectors.state.KeyedState` as the windows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from vigil.detectors.finding import Finding, group_key
from vigil.detectors.state import KeyedState, Packed, WindowState
from vigil.rules.model import Rule

_LOW: Final = (1 << 32) - 1


class Suppressor:
    """Suppression state of one rule."""

    def __init__(self, rule: Rule, limit: int) -> None:
        assert rule.suppress is not None
        self.rule = rule
        self.period = max(1, int(rule.suppress.total_seconds() * 1000))
        self.state: WindowState = KeyedState(limit)
        self.held = 0

    def admit(self, found: Finding, t: int) -> Finding | None:
        """``found`` (at event time ``t`` ms) with its suppressed count, or None while suppressed."""
        key = group_key(found.group)
        st = self.state.get(key)
        if type(st) is int and t < st >> 32:
            self.state.put(key, st + 1 if st & _LOW < _LOW else st)
            self.held += 1
            return None
        if not self.state.put(key, (t + self.period) << 32):
            return found  # past the key limit (counted): better an extra finding than a lost one
        count = st & _LOW if type(st) is int else 0
        return msgspec.structs.replace(found, suppressed=count) if count else found

    @property
    def granularity(self) -> int:
        return self.period

    def dead(self, watermark: int) -> Callable[[Packed], bool]:
        """Periods that have ended with nothing held back can be forgotten."""
        return lambda st: type(st) is int and st >> 32 < watermark and not st & _LOW

"""``sequence`` rules: ordered steps joined by fields, within a time limit — and "A not followed by B".

Each group (the values of the steps' ``by`` fields) holds at most one *partial* match: the step it waits
for, the time of its first step, and the ids of the events so far, packed in one string (no container per
key, see state.py). An event that matches:

* step 0 with no live partial for its group starts one (the earliest start is kept: a second step-0 event
  does not restart a live partial);
* the step the partial waits for, within ``within`` of the first step, advances it; the last step completes
  it and a finding fires with every step's event id;
* when the last step is ``absent``, a partial that has matched every other step fires only when the
  watermark passes (is later than) ``first + within`` without an absent-step event for the group; one
  arriving in time (at ``first + within`` exactly included) cancels it. So "attestation failed, and no
  successful re-attestation within 10 minutes" waits for event time to be complete — the allowed lateness
  — before it fires.

One event advances a group's partial by at most one step (steps are tried from the last to the first).
Partials older than ``within`` are dropped by the expiry sweep. Steps that name another rule are satisfied
by that rule's findings on the event (before suppression).
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
#: separates the event ids inside a packed partial
_IDS: Final = "\x1e"


def _pack(step: int, start: int, ids: str) -> str:
    return f"{step}:{start}:{ids}"


def _unpack(st: Packed) -> tuple[int, int, str]:
    assert type(st) is str
    step, start, ids = st.split(":", 2)
    return int(step), int(start), ids


class SequenceDetector:
    """One sequence rule's partial matches (see module docstring)."""

    def __init__(self, rule: Rule, limit: int) -> None:
        seq = rule.sequence
        assert seq is not None
        self.rule = rule
        self.steps = seq.steps
        self.fields = seq.steps[0].by
        self.key_of: list[Callable[[Event], str]] = [key_function(s.by) for s in seq.steps]
        self.within = int(seq.within.total_seconds() * 1000)
        self.absent = seq.steps[-1].absent
        #: steps that must happen (all of them unless the last is absent)
        self.n_pos = len(seq.steps) - (1 if self.absent else 0)
        self.state: WindowState = KeyedState(limit)
        self.next_due = NO_TIMER

    def on_event(self, event: Event, t: int, matched: list[int], out: list[Finding]) -> None:
        """``event`` (at admitted time ``t``) matched the steps ``matched`` of this rule."""
        done: set[str] = set()
        for i in sorted(matched, reverse=True):
            key = self.key_of[i](event)
            if key in done:
                continue
            if self._step(i, key, event, t, out):
                done.add(key)

    def _step(self, i: int, key: str, event: Event, t: int, out: list[Finding]) -> bool:
        st = self.state.get(key)
        if st is not None:
            step, start, ids = _unpack(st)
            if t - start > self.within:
                if step == self.n_pos and self.absent:
                    return False  # waiting on the absent step: the timer decides (see due())
                self.state.pop(key)
                st = None
        if st is None:
            if i != 0:
                return False
            if self.n_pos == 1:  # a single positive step then an absent one: wait for the timer
                self._wait(key, 1, t, event.id)
                return True
            return self.state.put(key, _pack(1, t, event.id))
        if self.absent and i == len(self.steps) - 1 and step == self.n_pos:
            self.state.pop(key)  # the thing that had to be absent happened in time: cancelled
            return True
        if i != step or step >= self.n_pos:
            return False
        ids = f"{ids}{_IDS}{event.id}"
        if step + 1 == self.n_pos:
            if self.absent:
                self._wait(key, step + 1, start, ids)
                return True
            self.state.pop(key)
            out.append(
                finding(self.rule, tuple(ids.split(_IDS)), event.time, group_from_key(self.fields, key))
            )
            return True
        self.state.put(key, _pack(step + 1, start, ids))
        return True

    def _wait(self, key: str, step: int, start: int, ids: str) -> None:
        if self.state.put(key, _pack(step, start, ids)):
            self.next_due = min(self.next_due, start + self.within + 1)

    def due(self, watermark: int, out: list[Finding]) -> None:
        """Fire the partials whose absent step did not come by ``first + within`` (watermark passed it)."""
        if watermark < self.next_due:
            return
        self.next_due = NO_TIMER
        fired: list[str] = []
        for key, st in self.state.items():
            step, start, ids = _unpack(st)
            if step != self.n_pos:
                continue
            deadline = start + self.within
            if deadline < watermark:
                fired.append(key)
                group = group_from_key(self.fields, key)
                out.append(finding(self.rule, tuple(ids.split(_IDS)), from_ms(deadline), group))
            else:
                self.next_due = min(self.next_due, deadline + 1)
        for key in fired:
            self.state.pop(key)

    @property
    def granularity(self) -> int:
        return self.within

    def dead(self, watermark: int) -> Callable[[Packed], bool]:
        """Partials the expiry sweep may drop: past ``within`` and not waiting on an absent step."""
        within, n_pos, absent = self.within, self.n_pos, self.absent

        def expired(st: Packed) -> bool:
            step, start, _ = _unpack(st)
            return start + within < watermark and not (absent and step == n_pos)

        return expired

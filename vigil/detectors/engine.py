"""The detector: every rule form over a stream of events, with suppression, timers and snapshots.

One :class:`Detector` holds a rule set. Its :class:`~vigil.detectors.match.Matcher` indexes every filter
expression at once — single-event rules, the ``match`` of threshold and flatline rules, and each sequence
step (as a pseudo-rule ``<id>#<n>``) — so an event meets only its candidate filters, whatever the form.
Then, per event:

1. single-event rules that matched become findings;
2. threshold and flatline filters that matched update their rule's state (``threshold.py``,
   ``flatline.py``), which may fire;
3. sequence steps that matched (and steps naming a rule that fired in 1-2) advance partials
   (``sequence.py``);
4. timers whose due time the event's watermark has passed fire (flatlines, ``absent`` steps, ``at_most``
   windows) — before 1-3 in fact, since what was due happened before this event;
5. findings of rules with ``suppress`` go through their :class:`~vigil.detectors.suppress.Suppressor`.

Event times go through an :class:`~vigil.detectors.clock.EventClock` first (late, future and 1970 events
are counted and clamped). Idle state is swept out a few shards at a time every :data:`SWEEP_EVERY` events,
so no single event pays for a full scan. :meth:`Detector.snapshot` / :meth:`Detector.restore` carry the
open state across a restart (``snapshot.py``); a rule whose text changed starts from empty state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Final, Protocol

from vigil.detectors.clock import EventClock, to_ms
from vigil.detectors.compiled import NATIVE
from vigil.detectors.fastpath import Update, fast_update
from vigil.detectors.finding import Finding, group_of, single
from vigil.detectors.flatline import FlatlineDetector
from vigil.detectors.match import Matcher
from vigil.detectors.sequence import SequenceDetector
from vigil.detectors.state import DEFAULT_MAX_KEYS, Packed, WindowState
from vigil.detectors.suppress import Suppressor
from vigil.detectors.threshold import ThresholdDetector
from vigil.events.model import Event
from vigil.rules.model import Rule

#: events between two incremental expiry sweep steps (each visits one shard of one rule's state)
SWEEP_EVERY: Final = 32
NO_TIMER: Final = 1 << 62
#: the state name of a rule's suppression: ``<rule id>!suppress`` (see :meth:`Detector.states`)
SUPPRESS_SUFFIX: Final = "!suppress"


class Stateful(Protocol):
    """What the engine needs from every stateful detector."""

    rule: Rule
    state: WindowState
    next_due: int

    @property
    def granularity(self) -> int: ...

    def due(self, watermark: int, out: list[Finding]) -> None: ...

    def dead(self, watermark: int) -> Callable[[Packed], bool]: ...


class Detector:
    """Evaluates a rule set, every form, over events in (roughly) event-time order."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        lateness: timedelta = timedelta(minutes=5),
        max_future: timedelta = timedelta(minutes=10),
        live: bool = False,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: EventClock | None = None,
        native: bool = NATIVE,
    ) -> None:
        """``native``: plain count and distinct rules keep their windows in the compiled tables
        (compiled.py) where they are built; False runs them in pure Python (tests compare the two)."""
        self.rules = tuple(rules)
        self.native = native
        self._clock_args = (lateness, max_future, live)
        self.clock = clock or EventClock(lateness, max_future=max_future, live=live)
        self.thresholds: dict[int, ThresholdDetector] = {}
        self.flatlines: dict[int, FlatlineDetector] = {}
        #: pseudo-rule id(step rule) -> (sequence detector, step index)
        self.steps: dict[int, tuple[SequenceDetector, int]] = {}
        #: rule id -> the (sequence, step) pairs that wait for that rule's findings
        self.refs: dict[str, list[tuple[SequenceDetector, int]]] = {}
        self.suppressors: dict[str, Suppressor] = {}
        self.sequences: list[SequenceDetector] = []
        indexed: list[Rule] = []
        for rule in self.rules:
            if rule.suppress is not None:
                self.suppressors[rule.id] = Suppressor(rule, max_keys)
            if rule.threshold is not None:
                self.thresholds[id(rule)] = ThresholdDetector(rule, max_keys, native=native)
            elif rule.flatline is not None:
                self.flatlines[id(rule)] = FlatlineDetector(rule, max_keys)
            elif rule.sequence is not None:
                seq = SequenceDetector(rule, max_keys)
                self.sequences.append(seq)
                for i, step in enumerate(rule.sequence.steps):
                    if step.rule_id is not None:
                        self.refs.setdefault(step.rule_id, []).append((seq, i))
                        continue
                    pseudo = rule.step_filter(i)
                    self.steps[id(pseudo)] = (seq, i)
                    indexed.append(pseudo)
                continue
            indexed.append(rule)
        self.matcher = Matcher(indexed)
        self.stateful: list[Stateful] = [*self.thresholds.values(), *self.flatlines.values(), *self.sequences]
        #: the detectors that have timers: flatlines, sequences with an absent step, at_most thresholds
        self._timed: list[Stateful] = [*self.flatlines.values()]
        self._timed += [s for s in self.sequences if s.absent]
        self._timed += [d for d in self.thresholds.values() if d.high is not None]
        #: id(rule) -> its state update, for the threshold and flatline filters the matcher returns
        self._updates: dict[int, Update] = {}
        self._sweepable: list[tuple[WindowState, Stateful | Suppressor]] = []
        self._sweep_next = 0
        self._bind_states()
        #: whether anything needs event time at all (else events skip the clock)
        self._needs_time = bool(self.stateful or self.suppressors)
        self._tick = 0

    # -- the event path ------------------------------------------------------------------------------

    def process(self, event: Event) -> list[Finding]:
        """The findings ``event`` causes, including timers its time lets fire."""
        matched = self.matcher.matching(event)
        if not self._needs_time:
            if not matched:
                return []
            group = group_of(event)
            return [single(rule, event, group) for rule in matched]
        t = self.clock.admit(to_ms(event.time))
        out: list[Finding] = []
        # Timers first: what was due by the new watermark happened before this event (a node's own return
        # after a long silence must not hide the silence).
        if self._timed:
            self._fire_due(out)
        if matched:
            self._dispatch(matched, event, t, out)
        self._tick += 1
        if self._tick >= SWEEP_EVERY:
            self._tick = 0
            self._sweep()
        return self._suppress(out, t) if self.suppressors and out else out

    def _dispatch(self, matched: list[Rule], event: Event, t: int, out: list[Finding]) -> None:
        steps: dict[int, tuple[SequenceDetector, list[int]]] | None = None
        group: Mapping[str, str] | None = None
        updates = self._updates
        step_of = self.steps or None  # (no sequence steps: no look-up per single-event match)
        for rule in matched:
            key = id(rule)
            update = updates.get(key)
            if update is not None:
                try:  # (free unless it raises: a fault in one rule's state must not stop the others)
                    update(event, t, out)
                except Exception as exc:  # counted per rule and logged (Matcher.fault)
                    self.matcher.fault(rule, event, exc, bug=True)
                continue
            step = step_of.get(key) if step_of is not None else None
            if step is not None:
                if steps is None:
                    steps = {}
                steps.setdefault(id(step[0]), (step[0], []))[1].append(step[1])
                continue
            if group is None:
                group = group_of(event)
            out.append(single(rule, event, group))
        if self.refs and out:
            for found in out:
                for seq, i in self.refs.get(found.rule, ()):
                    if steps is None:
                        steps = {}
                    steps.setdefault(id(seq), (seq, []))[1].append(i)
        if steps:
            for seq, indexes in steps.values():
                try:
                    seq.on_event(event, t, indexes, out)
                except Exception as exc:  # as above
                    self.matcher.fault(seq.rule, event, exc, bug=True)

    def _suppress(self, found: list[Finding], t: int) -> list[Finding]:
        out: list[Finding] = []
        for f in found:
            sup = self.suppressors.get(f.rule)
            if sup is None:
                out.append(f)
                continue
            when = t if f.event_ids else to_ms(f.time)
            kept = sup.admit(f, when)
            if kept is not None:
                out.append(kept)
        return out

    # -- time ----------------------------------------------------------------------------------------

    def _fire_due(self, out: list[Finding]) -> None:
        watermark = self.clock.watermark
        for det in self._timed:
            if watermark >= det.next_due:
                try:
                    det.due(watermark, out)
                except Exception as exc:  # as in _dispatch; a timer that fails is not
                    # retried before its next due time, so it cannot fail on every event in between
                    det.next_due = watermark + max(1, det.granularity)
                    self.matcher.fault(det.rule, None, exc, bug=True)

    def tick(self) -> list[Finding]:
        """Live mode: advance the watermark with the monotonic clock and fire what is due (call it every
        second or so, events or not: a flatline is the absence of events)."""
        self.clock.tick()
        out: list[Finding] = []
        self._fire_due(out)
        return self._suppress(out, self.clock.watermark) if self.suppressors and out else out

    def advance(self, by: timedelta) -> list[Finding]:
        """Move event time ``by`` past the newest event and fire what is due (test cases, end of replay)."""
        base = self.clock.max_seen if self.clock.max_seen > -(1 << 61) else self.clock.now_ms()
        self.clock.advance_to(base + int(by.total_seconds() * 1000))
        out: list[Finding] = []
        self._fire_due(out)
        return self._suppress(out, self.clock.watermark) if self.suppressors and out else out

    def _sweep(self) -> None:
        """One step of the expiry sweep: one shard of the next rule state that has work (each state is
        visited once per unit of its granularity of watermark progress, so idle rules cost nothing)."""
        watermark = self.clock.watermark
        pairs = self._sweepable
        for _ in range(len(pairs)):
            state, owner = pairs[self._sweep_next]
            self._sweep_next = (self._sweep_next + 1) % len(pairs)
            generation = watermark // max(1, owner.granularity)
            if state.pending(generation):
                state.sweep(owner.dead(watermark), 1, generation)
                return

    # -- introspection -------------------------------------------------------------------------------

    def open_keys(self) -> int:
        return sum(d.state.size for d in self.stateful) + sum(s.state.size for s in self.suppressors.values())

    def stats(self) -> dict[str, object]:
        """Counters for metrics and ``vigil replay --stats``."""
        per_rule: dict[str, dict[str, int]] = {}
        for det in self.stateful:
            entry = {"keys": det.state.size, "key_limit_hits": det.state.limited}
            if isinstance(det, ThresholdDetector):
                entry |= {"stale_events": det.stale, "bad_values": det.bad_values}
            per_rule[det.rule.id] = entry
        for rid, sup in self.suppressors.items():
            per_rule.setdefault(rid, {})["suppressed"] = sup.held
        for rid, n in self.matcher.errors.items():  # (filters, state updates and timers that raised)
            if n:
                per_rule.setdefault(rid, {})["errors"] = n
        return {
            **self.clock.counters(),
            "watermark_ms": self.clock.watermark,
            "open_keys": self.open_keys(),
            # (whether plain count/distinct windows run in the compiled tables: False is the slower path)
            "compiled_windows": self.native,
            "rules": per_rule,
        }

    def states(self) -> dict[str, tuple[Rule, WindowState]]:
        """Every keyed state by a stable name (for snapshots): ``<rule id>`` and ``<rule id>!suppress``."""
        out = {d.rule.id: (d.rule, d.state) for d in self.stateful}
        out |= {rid + SUPPRESS_SUFFIX: (s.rule, s.state) for rid, s in self.suppressors.items()}
        return out

    def _bind_states(self) -> None:
        """(Re)build what caches a reference to a rule's state: the state updates and the sweep."""
        # A plain count or distinct rule's update is generated with its state bound in (fastpath.py), so
        # it is made anew here whenever a state object is replaced.
        self._updates = {k: fast_update(d) or d.on_event for k, d in self.thresholds.items()}
        self._updates |= {k: f.on_event for k, f in self.flatlines.items()}
        #: every keyed state with its owner, visited round robin by the sweep
        self._sweepable = [(d.state, d) for d in self.stateful]
        self._sweepable += [(s.state, s) for s in self.suppressors.values()]
        self._sweep_next = 0

    def adopt(self, old: Detector) -> list[str]:
        """Take over ``old``'s open state for every rule whose text is unchanged, and its clock (a hot
        reload: windows, partial sequences, flatline times and suppression periods of untouched rules
        carry on; a changed rule starts empty, its old state would mean something else). Returns the ids
        of the rules whose state was kept."""
        previous = old.states()
        kept: list[str] = []
        for det in self.stateful:
            prev = previous.get(det.rule.id)
            if (
                prev is not None
                and prev[0].content_hash == det.rule.content_hash
                and type(prev[1]) is type(det.state)  # (a native=False detector next to a native one)
            ):
                det.state = prev[1]
                kept.append(det.rule.id)
        for rid, sup in self.suppressors.items():
            prev = previous.get(rid + SUPPRESS_SUFFIX)
            if prev is not None and prev[0].content_hash == sup.rule.content_hash:
                sup.state = prev[1]
        self.clock = old.clock
        self._clock_args = old._clock_args
        self._bind_states()
        self.rearm()
        return kept

    def reset(self) -> None:
        """Forget all state and start a new clock (each embedded test case starts from nothing)."""
        for det in self.stateful:
            det.state.clear()
            det.next_due = NO_TIMER
        for sup in self.suppressors.values():
            sup.state.clear()
            sup.held = 0
        lateness, max_future, live = self._clock_args
        self.clock = EventClock(lateness, max_future=max_future, live=live)
        self._tick = 0

    def rearm(self) -> None:
        """After a restore: every timer rescans its restored state at the next watermark check."""
        for det in self._timed:
            det.next_due = 0

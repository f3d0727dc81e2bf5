"""Per-partition detector state for the faust workers: one :class:`Detector` per events-topic partition.

Why not faust's windowed tables: the detectors (threshold buckets, sequence partials, flatline timers,
suppression, the event-time watermark) already keep compact state and serialise it
(:mod:`vigil.detectors.snapshot`); re-expressing them as faust windows would be a second implementation
with other semantics (faust windows expire by the wall clock, and its ``on_window_close`` gets the raw value,
see reference/dependencies.md §1). So a partition's whole detector is the unit of state, and its snapshot
is the value of one key (the partition number) in a changelog-backed faust table: faust recovers it after
a restart, keeps standby copies, and hands it to whichever worker the partition moves to.

Exactly-once state over at-least-once delivery: a snapshot records the offset of the last event it
includes, and the events up to it are acknowledged only *after* the snapshot was handed to the producer
(faust flushes the producer before it commits offsets). So the committed offset never passes the saved
state: after a crash the worker restores the snapshot, skips re-delivered events at or below its offset,
and processes the rest from exactly the state they first met. The ids of recent events are kept in the
snapshot too, so an event the normaliser published twice (its raw record re-delivered) counts once.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

import orjson

from vigil.detectors.engine import Detector
from vigil.detectors.finding import Finding
from vigil.detectors.snapshot import restore, snapshot
from vigil.errors import VigilError
from vigil.events.model import Event
from vigil.rules.model import Rule

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">qI")  # offset covered, length of the recent-ids JSON
#: events whose ids a partition remembers for de-duplication (and keeps for target templates)
DEFAULT_RECENT: Final = 20_000


@dataclass
class Partition:
    """One partition's detector, the offset its state covers, and its recent events."""

    detector: Detector
    #: offset of the last event included in the detector's state (-1: none yet)
    offset: int = -1
    #: offset included in the last saved snapshot
    saved: int = -1
    saved_at: float = field(default_factory=time.monotonic)
    #: ids of the latest events, newest last (de-duplication; saved with the state)
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    #: the latest events themselves, for target templates (not saved)
    events: OrderedDict[str, Event] = field(default_factory=OrderedDict)

    @property
    def dirty(self) -> bool:
        return self.offset > self.saved


class PartitionDetectors:
    """The detectors of the partitions this worker owns, restored from and saved to a state table."""

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        load: Callable[[int], bytes | None],
        lateness: timedelta = timedelta(minutes=5),
        live: bool = False,
        max_keys: int = 1_000_000,
        recent: int = DEFAULT_RECENT,
        keep_events: int = 2_000,
    ) -> None:
        self.rules = tuple(rules)
        self._load = load
        self._args = {"lateness": lateness, "live": live, "max_keys": max_keys}
        self.recent = recent
        self.keep_events = keep_events
        self.parts: dict[int, Partition] = {}
        self.duplicates = 0
        self.skipped = 0
        probe = self._new()
        #: whether any rule keeps state (else nothing is saved and events are acknowledged at once)
        self.stateful = bool(probe.stateful or probe.suppressors)

    def _new(self) -> Detector:
        return Detector(self.rules, **self._args)  # type: ignore[arg-type]

    def part(self, partition: int) -> Partition:
        """The partition's state: restored from its saved snapshot the first time it is used here."""
        found = self.parts.get(partition)
        if found is not None:
            return found
        part = Partition(self._new())
        body = self._load(partition)
        if body is not None:
            try:
                self._restore(part, body)
            except (VigilError, ValueError, struct.error, orjson.JSONDecodeError) as exc:
                log.error("partition %d: saved detector state unusable, starting empty: %s", partition, exc)
                part = Partition(self._new())
            else:
                log.info("partition %d: detector state restored through offset %d", partition, part.offset)
        self.parts[partition] = part
        return part

    def drop(self, keep: Iterable[int]) -> None:
        """Forget the partitions not in ``keep`` (revoked: their state moved with the changelog)."""
        kept = set(keep)
        for p in [p for p in self.parts if p not in kept]:
            del self.parts[p]

    # -- the event path --------------------------------------------------------------------------------

    def process(self, partition: int, offset: int, event: Event) -> list[Finding] | None:
        """The findings of ``event`` at ``offset``; None when the state already holds it (a re-delivery
        at or below the restored offset, or an event id seen recently)."""
        part = self.part(partition)
        if offset <= part.offset:
            self.skipped += 1
            return None
        part.offset = offset
        recent = part.recent
        if event.id in recent:
            self.duplicates += 1
            return None
        recent[event.id] = None
        if len(recent) > self.recent:
            recent.popitem(last=False)
        events = part.events
        events[event.id] = event
        if len(events) > self.keep_events:
            events.popitem(last=False)
        return part.detector.process(event)

    def skip(self, partition: int, offset: int) -> None:
        """An event that could not be decoded: its offset counts as processed."""
        part = self.part(partition)
        part.offset = max(part.offset, offset)

    def event(self, partition: int, event_id: str) -> Event | None:
        """A recent event of the partition (for target templates of findings about earlier events)."""
        part = self.parts.get(partition)
        return part.events.get(event_id) if part is not None else None

    def tick(self) -> dict[int, list[Finding]]:
        """Live timers of every owned partition (flatlines fire in silence)."""
        out: dict[int, list[Finding]] = {}
        for p, part in self.parts.items():
            found = part.detector.tick()
            if found:
                out[p] = found
                part.saved = min(part.saved, part.offset - 1)  # the state changed: save it again
        return out

    # -- saving ----------------------------------------------------------------------------------------

    def due(self, partition: int, interval: float, *, force: bool = False) -> bool:
        """Whether the partition's state should be saved now."""
        part = self.parts.get(partition)
        if part is None or not part.dirty:
            return False
        return force or time.monotonic() - part.saved_at >= interval

    def save(self, partition: int) -> bytes:
        """The partition's snapshot (offset, recent ids, detector) and mark it saved."""
        part = self.parts[partition]
        ids = orjson.dumps(list(part.recent))
        body = _HEADER.pack(part.offset, len(ids)) + ids + snapshot(part.detector)
        part.saved = part.offset
        part.saved_at = time.monotonic()
        return body

    def _restore(self, part: Partition, body: bytes) -> None:
        offset, n = _HEADER.unpack_from(body)
        start = _HEADER.size
        ids = orjson.loads(body[start : start + n])
        restore(part.detector, body[start + n :], exact_clock=True)
        part.offset = part.saved = offset
        part.recent = OrderedDict((str(i), None) for i in ids)

    @staticmethod
    def covered(body: bytes) -> int:
        """The offset a saved snapshot covers (for tests and tools)."""
        offset: int = _HEADER.unpack_from(body)[0]
        return offset


@dataclass
class Ownership:
    """Which events partitions this worker holds, since which consumer generation, and whether a rebalance
    is under way: what decides if an event the detect agent holds may still be processed.

    Why it is needed: faust's rebalances are eager (every partition is revoked, then the new assignment is
    given, often the same partitions again), and the detect agent may still hold a batch fetched under the
    old assignment. A partition's detector is therefore kept across a revoke when the next assignment,
    the very next generation, gives the partition back: an event of a partition held throughout is
    contiguous with the kept state (processing it from a state restored from the last save instead would
    jump past the unsaved events, and their re-delivery would then be skipped as covered: lost counts).
    When generations were skipped (this worker was out of the group meanwhile, and another may have
    owned the partition, processed and saved it), every detector is dropped and restored from the
    changelog. An event of a partition not held, or fetched before the partition was assigned here, is
    left unprocessed and unacknowledged: its owner reads it again from the committed offset. Between a
    revoke and the next assignment nothing is saved or acknowledged, so a partition that moves away gets
    no write from its old owner."""

    #: events partitions held (None: no assignment seen yet, as when a test drives the stage directly)
    owned: set[int] | None = None
    #: the consumer generation in which each held partition was assigned here (events fetched earlier are
    #: from a previous stint and are not contiguous with the state restored for this one)
    since: dict[int, int] = field(default_factory=dict)
    #: the generation of the last assignment applied
    generation: int | None = None
    #: revoked and not yet assigned again: no saves, no acknowledgements
    rebalancing: bool = False
    #: events left unprocessed for their current owner
    stale: int = 0

    def revoke(self) -> None:
        self.rebalancing = True

    def assign(self, partitions: Iterable[int], generation: int) -> set[int]:
        """Apply an assignment; returns the partitions whose state is to be dropped: those no longer held,
        or every one held before when the assignment does not follow the last one directly."""
        now = set(partitions)
        held = self.owned if self.owned is not None else set()
        last = self.generation
        if last is not None and generation not in (last, last + 1):
            held, gone = set(), set(held)  # out of the group in between: nothing held is known to be current
        else:
            gone = held - now
        for p in now - held:
            self.since[p] = generation
        for p in set(self.since) - now:
            del self.since[p]
        self.owned, self.generation, self.rebalancing = now, generation, False
        return gone

    def current(self, partition: int, generation: int | None) -> bool:
        """Whether an event of ``partition`` fetched in ``generation`` may be processed here."""
        if self.owned is None:
            return True
        if partition not in self.owned:
            return False
        since = self.since.get(partition)
        return generation is None or since is None or generation >= since

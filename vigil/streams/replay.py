"""``vigil replay``: normalise files and evaluate a rule set over them, in process, as the daemon would.

This is the path analysts use to try rules on recorded data, and the path ``bench/`` measures: read and
normalise (the same :class:`~vigil.events.batch.BatchNormalizer` as ``vigil normalize``), then the
:class:`~vigil.detectors.engine.Detector` (indexed matcher, windows, sequences, flatlines, suppression).

Order. Stateful rules need events in event-time order, and replay streams (memory stays flat however
large the files): each batch of a file (a few thousand records) is sorted by ``time`` (a stable sort), and
when several files are given they are merged by time, as if the sources had been read side by side. Files
are usually in time order already (logs are written as things happen); events out of order *across*
batches by less than the allowed lateness are handled exactly (windows are keyed by event time), and those
out of order by more are late events, counted and clamped as in the daemon (docs/rules.md, "Event time"):
raise ``--lateness`` for a badly shuffled file. A rule set of single-event rules skips the ordering.
``advance`` moves event time past the last event at the end, so flatlines and ``absent`` steps still
pending can fire; without it they stay pending, exactly as in the daemon when no later event has arrived.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from operator import attrgetter

from vigil.detectors.engine import Detector
from vigil.detectors.finding import Finding
from vigil.events.batch import BatchNormalizer
from vigil.events.deadletter import DeadLetter, for_failed_event
from vigil.events.model import Event
from vigil.events.reader import open_source

FindingsFn = Callable[[list[Finding]], None]


@dataclass
class ReplayStats:
    """What ``--stats`` prints."""

    events: int = 0
    findings: int = 0
    dead_letters: int = 0
    rule_errors: int = 0
    seconds: float = 0.0
    errors_by_rule: dict[str, int] = field(default_factory=dict)
    detector: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "events": self.events,
            "findings": self.findings,
            "dead_letters": self.dead_letters,
            "rule_errors": self.rule_errors,
            "rule_errors_by_rule": self.errors_by_rule,
            "seconds": round(self.seconds, 6),
            "events_per_second": round(self.events / self.seconds, 1) if self.seconds else None,
            "detector": self.detector,
        }


def replay(
    files: Iterable[str],
    detector: Detector,
    *,
    fmt: str = "auto",
    on_findings: FindingsFn | None = None,
    on_dead: Callable[[list[DeadLetter]], None] | None = None,
    advance: timedelta | None = None,
) -> ReplayStats:
    """Normalise ``files`` and run every event through ``detector``; findings and dead letters go to the
    callbacks in batches."""
    stats = ReplayStats()
    errors = detector.matcher.errors
    errors_before = sum(errors.values())
    ordered = bool(detector.stateful or detector.suppressors)
    started = time.perf_counter()

    def batches(path: str) -> Iterator[list[Event]]:
        normalizer = BatchNormalizer(fmt)
        with open_source(path) as fh:
            for batch in normalizer.stream(fh, path):
                stats.events += len(batch.events)
                stats.dead_letters += len(batch.dead)
                if batch.dead and on_dead is not None:
                    on_dead(batch.dead)
                if batch.events:
                    yield sorted(batch.events, key=_TIME) if ordered else batch.events

    paths = list(files)
    if ordered and len(paths) > 1:
        merged = heapq.merge(*(_flat(batches(p)) for p in paths), key=_TIME)
        _run(_chunks(merged), detector, stats, on_findings, on_dead)
    else:
        for path in paths:
            _run(batches(path), detector, stats, on_findings, on_dead)
    if advance is not None:
        _emit(detector.advance(advance), stats, on_findings)
    stats.seconds = time.perf_counter() - started
    stats.rule_errors = sum(errors.values()) - errors_before
    stats.errors_by_rule = {k: v for k, v in errors.items() if v}
    stats.detector = detector.stats()
    return stats


_TIME = attrgetter("time")


def _flat(batches: Iterator[list[Event]]) -> Iterator[Event]:
    for batch in batches:
        yield from batch


def _chunks(events: Iterator[Event], size: int = 4096) -> Iterator[list[Event]]:
    chunk: list[Event] = []
    for event in events:
        chunk.append(event)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run(
    batches: Iterable[list[Event]],
    detector: Detector,
    stats: ReplayStats,
    on: FindingsFn | None,
    on_dead: Callable[[list[DeadLetter]], None] | None,
) -> None:
    process = detector.process
    for batch in batches:
        found: list[Finding] = []
        for event in batch:
            try:
                hits = process(event)
            except Exception as exc:  # as the daemon: dead-lettered, the replay goes on
                stats.dead_letters += 1
                if on_dead is not None:
                    on_dead([for_failed_event("replay", event, exc)])
                continue
            if hits:
                found += hits
        _emit(found, stats, on)


def _emit(found: list[Finding], stats: ReplayStats, on_findings: FindingsFn | None) -> None:
    stats.findings += len(found)
    if found and on_findings is not None:
        on_findings(found)

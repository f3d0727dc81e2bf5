"""``vigil replay``: normalise files and evaluate a rule set over them, in process, as the daemon would.

This is the path analysts use to try rules on recorded data, and the path ``bench/rules.py`` measures: read
and normalise (the same :class:`~vigil.events.batch.BatchNormalizer` as ``vigil normalize``), then the
indexed :class:`~vigil.detectors.match.Matcher`. Single-event rules see events in input order; the stateful
forms of the next release will order them by event time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vigil.detectors.match import Finding, Matcher
from vigil.events.batch import BatchNormalizer
from vigil.events.deadletter import DeadLetter
from vigil.events.reader import open_source


@dataclass
class ReplayStats:
    """What ``--stats`` prints."""

    events: int = 0
    findings: int = 0
    dead_letters: int = 0
    rule_errors: int = 0
    seconds: float = 0.0
    errors_by_rule: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "events": self.events,
            "findings": self.findings,
            "dead_letters": self.dead_letters,
            "rule_errors": self.rule_errors,
            "rule_errors_by_rule": self.errors_by_rule,
            "seconds": round(self.seconds, 6),
            "events_per_second": round(self.events / self.seconds, 1) if self.seconds else None,
        }


def replay(
    files: Iterable[str],
    matcher: Matcher,
    *,
    fmt: str = "auto",
    on_findings: Callable[[list[Finding]], None] | None = None,
    on_dead: Callable[[list[DeadLetter]], None] | None = None,
) -> ReplayStats:
    """Normalise ``files`` and match every event; findings and dead letters go to the callbacks in batches."""
    stats = ReplayStats()
    normalizer = BatchNormalizer(fmt)
    match = matcher.match
    errors_before = sum(matcher.errors.values())
    started = time.perf_counter()
    for path in files:
        with open_source(path) as fh:
            for batch in normalizer.stream(fh, path):
                found: list[Finding] = []
                for event in batch.events:
                    hits = match(event)
                    if hits:
                        found += hits
                stats.events += len(batch.events)
                stats.findings += len(found)
                stats.dead_letters += len(batch.dead)
                if found and on_findings is not None:
                    on_findings(found)
                if batch.dead and on_dead is not None:
                    on_dead(batch.dead)
    stats.seconds = time.perf_counter() - started
    stats.rule_errors = sum(matcher.errors.values()) - errors_before
    stats.errors_by_rule = {k: v for k, v in matcher.errors.items() if v}
    return stats

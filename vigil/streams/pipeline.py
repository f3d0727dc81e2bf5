"""The detect stage of the durable pipeline: the store's event log in, findings out, exactly once.

Sources append accepted events to the store's log (each with a sequence number) before they acknowledge
them. This stage reads the log after its position, runs every event through the
:class:`~vigil.detectors.engine.Detector`, and commits the findings together with its new cursor — and,
every ``snapshot_every`` seconds, the detector's state snapshot — in one transaction
(:meth:`~vigil.store.sqlite.Store.commit_detection`).

Recovery: on start the stage restores the last snapshot and resumes from the sequence that snapshot
covers, not from the (later) committed cursor, so the events between the two are processed again with the
state they were first processed with. The findings that produces are the ones already stored, with the
same identities (:func:`~vigil.detectors.finding.finding_id`), and the store keeps each once: events are
processed at least once, findings appear exactly once.

The stage is plain methods over a batch (:meth:`DetectStage.step`), so the embedded runner drives it from
its event loop and another runner (faust, later) can drive the same calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from vigil.detectors.engine import Detector
from vigil.detectors.finding import Finding
from vigil.detectors.snapshot import restore, snapshot
from vigil.errors import VigilError
from vigil.events.deadletter import DeadLetter, for_failed_event
from vigil.events.model import Event
from vigil.logs import sampled
from vigil.rules.schema_forms import parse_duration
from vigil.store.sqlite import Store, StoredEvent, StoreError
from vigil.streams.crash import crash_point

log = logging.getLogger(__name__)

#: events held in memory between a source's commit and the detect stage (past it: read from the store)
MAX_HANDED: Final = 100_000
#: most events per step (and per commit). Under load every commit costs about the same fixed price (the
#: fsync, and the pages of the findings' and incidents' indexes it touches), so larger batches keep up:
#: at 3,000 the ingest benchmark's detect lag stayed under about 5,000 events where at 1,000 it grew to
#: about 45,000, and 4 of 4 paired runs processed more (median +10 %). A quiet stream commits what it has.
BATCH: Final = 3000
#: seconds between two retention passes over the incidents (store.incident_retention)
INCIDENT_PRUNE_EVERY: Final = 600.0


@dataclass
class DetectStats:
    """Counters for /metrics and /v1/status."""

    events: int = 0
    findings: int = 0
    new_findings: int = 0
    snapshots: int = 0
    #: events processed again after a restart (between the snapshot and the committed cursor)
    replayed: int = 0
    #: raw events removed by retention
    pruned: int = 0
    #: resolved incidents, and findings, removed by their retention
    pruned_incidents: int = 0
    pruned_findings: int = 0
    #: batches whose commit failed (the stage rebuilt its state and went on)
    commit_failures: int = 0
    #: events detection raised on (a bug): dead-lettered with the reason, and the stream went on
    dead_letters: int = 0


@dataclass
class _Batch:
    """One step's work between detection and its commit."""

    stored: list[StoredEvent]
    found: list[tuple[int, Finding]]
    last: int
    snapshot: bytes | None
    #: events detection failed on (:func:`~vigil.events.deadletter.for_failed_event`)
    dead: list[DeadLetter]
    forced: bool = False
    new: int = 0
    pruned: int = 0
    #: (incidents, findings) removed by their retention
    pruned_incidents: tuple[int, int] = (0, 0)


class DetectStage:
    """Store log -> detector -> findings in the store (see module docstring)."""

    def __init__(
        self,
        store: Store,
        detector: Detector,
        *,
        batch: int = BATCH,
        snapshot_every: float = 30.0,
        name: str = "detector",
        retention: str | None = None,
        incident_retention: str | None = None,
    ) -> None:
        self.store = store
        self.detector = detector
        self.batch = batch
        self.snapshot_every = snapshot_every
        self.name = name
        #: raw events older than this (received) and already detected are pruned after each snapshot
        self.retention_ms = int(parse_duration(retention).total_seconds() * 1000) if retention else None
        #: resolved incidents whose last finding and state change are older than this are deleted with
        #: their findings, at most every :data:`INCIDENT_PRUNE_EVERY` seconds (after a snapshot)
        self.incident_retention_ms = (
            int(parse_duration(incident_retention).total_seconds() * 1000) if incident_retention else None
        )
        self._last_incident_prune = -INCIDENT_PRUNE_EVERY
        self.stats = DetectStats()
        #: the last sequence committed (findings and cursor) ...
        self.position = 0
        #: ... and the last one the detector has seen: ahead of it while a batch commits (see :meth:`run`)
        self.read_to = 0
        #: events a source handed over right after committing them (seq -> event): read from memory
        #: instead of decoding them back from the store; anything missing is read from the store
        self._handed: dict[int, Event] = {}
        #: take a snapshot at the next step (after a hot reload: the stored one belongs to the old rules)
        self.force_snapshot = False
        self._handed_lock = threading.Lock()
        self._committed = 0
        self._last_snapshot = 0.0

    def recover(self) -> int:
        """Restore the last snapshot and set the position it covers; the sequence to resume after."""
        saved = self.store.snapshot(self.name)
        committed = self.store.cursor(self.name)
        self.position = 0
        self.detector.reset()  # (again, after a failed commit: the state it had is not the stored one)
        with self._handed_lock:
            self._handed.clear()
        if saved is not None:
            cursor, body = saved
            try:
                # the snapshot's clock exactly: events re-processed up to the committed cursor must meet the
                # watermark they met the first time, so their findings come out identical (same ids)
                report = restore(self.detector, body, exact_clock=True)
            except VigilError as exc:
                log.error("detector snapshot unusable, starting from empty state: %s", exc)
            else:
                self.position = cursor
                if report.dropped:
                    log.warning(
                        "rules changed since the snapshot; their state starts empty: %s", report.dropped
                    )
        elif committed:
            # No snapshot (no stateful rules, or none saved yet): single-event rules need no history.
            self.position = committed if not self.detector.stateful else 0
        self._committed = committed
        self._last_snapshot = time.monotonic()
        self.read_to = self.position
        return self.position

    def offer(self, seqs: Sequence[int], events: Sequence[Event]) -> None:
        """A source committed ``events`` under sequence numbers ``seqs`` (0: a duplicate, not stored):
        keep them in memory for the next step (any thread). Bounded: past :data:`MAX_HANDED` the stage
        reads the store instead."""
        with self._handed_lock:
            if len(self._handed) + len(events) > MAX_HANDED:
                return
            for seq, event in zip(seqs, events, strict=True):
                if seq > self.read_to:  # 0: a duplicate; <= read_to: the stage read it from the store
                    self._handed[seq] = event

    def _next(self) -> list[StoredEvent]:
        """The next batch after the position: from memory while it is contiguous, else from the store."""
        with self._handed_lock:
            handed = self._handed
            out: list[StoredEvent] = []
            pop = handed.pop
            start = self.read_to + 1
            for seq in range(start, start + self.batch):
                event = pop(seq, None)
                if event is None:
                    break
                out.append(StoredEvent(seq, event))
            if len(handed) > MAX_HANDED // 2:  # stale entries (below the position after a restart)
                for old in [k for k in handed if k <= self.read_to]:
                    del handed[old]
        return out or self.store.read_events(self.read_to, self.batch)

    def step(self, *, force_snapshot: bool = False) -> int:
        """Process one batch of the log after the position; the number of events processed."""
        work = self._detect(force_snapshot)
        if work is None:
            return 0
        try:
            self._commit(work)
        except StoreError:
            self.force_snapshot |= work.forced
            raise
        return self._done(work)

    def _detect(self, force_snapshot: bool) -> _Batch | None:
        """Run the next batch through the detector: what to commit, or None when there is nothing."""
        stored = self._next()
        found: list[tuple[int, Finding]] = []
        dead: list[DeadLetter] = []
        process = self.detector.process
        for item in stored:
            try:
                hits = process(item.event)
            except Exception as exc:  # a bug on one event must not stop the stream on it
                dead.append(self._failed(item, exc))
                continue
            for f in hits:
                found.append((item.seq, f))
        last = stored[-1].seq if stored else self.read_to
        # live timers only once past what the previous run committed: re-processing must not meet a
        # different watermark than the first pass did
        if self.detector.clock.live and last >= self._committed:
            found += [(last, f) for f in self.detector.tick()]
        force = force_snapshot or self.force_snapshot
        if not stored and not found and not force:
            return None
        due = force or time.monotonic() - self._last_snapshot >= self.snapshot_every
        # cleared now, not after the commit: a hot reload while the commit runs asks for a snapshot of the
        # new rules, and that request must survive (a failed commit restores it)
        self.force_snapshot = False
        if due:
            self._last_snapshot = time.monotonic()
        self.read_to = last
        return _Batch(stored, found, last, snapshot(self.detector) if due else None, dead, forced=force)

    def _failed(self, item: StoredEvent, exc: Exception) -> DeadLetter:
        """The dead letter of an event the detector raised on (rule faults are caught inside it; this is
        the engine's own), logged with its traceback the first time and then at every power of ten."""
        self.stats.dead_letters += 1
        n = self.stats.dead_letters
        if sampled(n):
            log.error(
                "detection failed on event %s (seq %d; %d so far): %r; dead-lettered, the stream goes on",
                item.event.id, item.seq, n, exc, exc_info=n == 1,
            )  # fmt: skip
        return for_failed_event(self.name, item.event, exc, f"seq {item.seq}")

    def _commit(self, work: _Batch) -> None:
        crash_point("detect.before_commit")
        work.new = self.store.commit_detection(work.found, work.last, work.snapshot, self.name, work.dead)
        crash_point("detect.after_commit")
        if work.snapshot is not None and self.retention_ms is not None:
            # only up to the snapshot's cursor, where a restart resumes: nothing it re-reads is gone
            cut = int(time.time() * 1000) - self.retention_ms
            work.pruned = self.store.prune_events(cut, processed_through=work.last)
        # Not at every snapshot: the candidates' look-up walks the old incidents that are still open
        due = time.monotonic() - self._last_incident_prune >= INCIDENT_PRUNE_EVERY
        if work.snapshot is not None and self.incident_retention_ms is not None and due:
            self._last_incident_prune = time.monotonic()
            cut = int(time.time() * 1000) - self.incident_retention_ms
            work.pruned_incidents = self.store.prune_incidents(cut)

    def _done(self, work: _Batch) -> int:
        if work.snapshot is not None:
            self.stats.snapshots += 1
            self.stats.pruned += work.pruned
            self.stats.pruned_incidents += work.pruned_incidents[0]
            self.stats.pruned_findings += work.pruned_incidents[1]
        stored = work.stored
        if stored and stored[0].seq <= self._committed:  # (in seq order: only after a restart)
            self.stats.replayed += sum(1 for s in stored if s.seq <= self._committed)
        self.stats.events += len(stored)
        self.stats.findings += len(work.found)
        self.stats.new_findings += work.new
        self.position = work.last
        return len(stored)

    def backlog(self) -> int:
        """Events in the store's log that this stage has not processed yet."""
        return max(0, self.store.last_seq() - self.position)

    def drain(self) -> int:
        """Process everything in the log now; the number of events processed."""
        total = 0
        while (n := self.step()) > 0:
            total += n
        return total

    async def run(self, wake: asyncio.Event, stopping: asyncio.Event, tick: float = 1.0) -> None:
        """Process as events arrive (``wake`` is set by sources after they append), tick timers every
        ``tick`` seconds, and take a last snapshot when ``stopping`` is set.

        Pipelined: while one batch commits in a worker thread (mostly outside the GIL), the loop detects the
        next one. Commits stay in order, one at a time, each with the snapshot taken right after its own
        batch; if one fails, the batch detected meanwhile is dropped with the rest of the state and
        :meth:`recover` rebuilds from the store."""
        pending: tuple[_Batch, asyncio.Future[None]] | None = None
        while not stopping.is_set():
            work: _Batch | None = None
            # Cleared before looking, not before waiting: a source that appends while this batch is
            # detected or the previous one commits (the awaits below) must find the stage awake afterwards,
            # not asleep for a tick with its events waiting.
            wake.clear()
            try:
                work = self._detect(False)
                if pending is not None:
                    await self._finish(*pending)
                    pending = None
                if work is not None:
                    pending = (work, asyncio.ensure_future(asyncio.to_thread(self._commit, work)))
                    if len(work.stored) >= self.batch:
                        await asyncio.sleep(0)  # more waiting: let the sources and the API run in between
                        continue
                    await self._finish(*pending)  # (caught up: findings and cursor out before idling)
                    pending = None
            except StoreError as exc:
                # Nothing of the batch was committed, but the detector has seen it: rebuild its state from
                # the store (snapshot, then the events after it) rather than count them twice.
                log.error("detection could not commit (%s); retrying from the last snapshot in 5 s", exc)
                self.stats.commit_failures += 1
                self.force_snapshot |= bool(work and work.forced) or bool(pending and pending[0].forced)
                pending = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=5.0)
                self.recover()
                continue
            waiter = asyncio.create_task(wake.wait())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait({waiter, stop}, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stop.cancel()
        if pending is not None:
            await self._finish(*pending)
        self.drain()
        self.step(force_snapshot=True)

    async def _finish(self, work: _Batch, commit: asyncio.Future[None]) -> None:
        await commit
        self._done(work)

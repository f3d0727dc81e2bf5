"""Event Hubs source, the core: a batch of events in, their records durable in the store, then the checkpoint.

Diagnostic settings (Activity Log, Key Vault and Storage resource logs) and Log Analytics data export rules
(``am-SecurityAlert``, ``am-SecurityIncident``) deliver to Event Hubs; every event body is UTF-8 JSON of the
form ``{"records": [...]}``, one body holding many records (reference/azure.md §1.1, §2.2). Each body goes
through the same :class:`~vigil.events.batch.BatchNormalizer` as every other door, so the existing
normalizers (activity, keyvault, storage, sentinel-alert, sentinel-incident) decide what each record is.

**Durable before checkpoint.** :meth:`BatchIngest.handle` receives one partition's batch (from the SDK's
``receive_batch`` callback in production, from a test's recorded log otherwise), normalises it, commits
the events and dead letters in one store transaction (:meth:`Store.accept`), hands them to the detect
stage (``offer``/``wake``) and only then writes the partition's checkpoint for the batch's last event. A
crash (or a lost ownership) anywhere before the checkpoint makes the next owner receive the batch again;
the records' event ids are stable, so the store keeps each once and counts the rest as duplicates. A
crash after the checkpoint loses nothing, because the commit came first. Checkpoints are therefore written
at most once per batch, never ahead of the store.

**Failures.** A store that cannot commit (disk full, locked) is retried with a back-off for as long as it
takes: the partition stops, nothing is checkpointed, nothing is skipped. A checkpoint that cannot be
written (storage account unreachable) is logged and counted but does not stop ingestion: the events are
already durable and the next batch's checkpoint covers this one; the cost is a longer replay after a
restart. A body that is not JSON, or a record no normalizer takes, is a dead letter naming the hub,
partition and sequence number (``eventhubs:<hub>/<partition>@<sequence>``).

**Back-pressure.** With ``backlog`` and ``max_backlog`` given, a batch waits before its commit while more
than ``max_backlog`` events wait for detection, so a burst stops the fetching instead of growing the log.

The watchdog and the SDK client live in :mod:`vigil.streams.eventhubs_consumer`; what they need from a
batch (when each partition last heard from its receiver) is recorded here, in :class:`PartitionActivity`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

import orjson
from azure.eventhub import EventData
from azure.eventhub.amqp import AmqpMessageBodyType

from vigil.events.batch import DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_MAX_RECORD_BYTES, BatchNormalizer, Result
from vigil.events.model import Event
from vigil.store.sqlite import Store, StoreError

log = logging.getLogger(__name__)

#: the starting position of a partition without a checkpoint: the oldest retained event
DEFAULT_STARTING_POSITION: Final = "-1"
#: longest pause between two attempts to commit a batch the store refused
MAX_STORE_RETRY_SECONDS: Final = 30.0
#: how often a batch held back by the detection backlog looks again
BACKLOG_WAIT_SECONDS: Final = 0.5

StartingPosition = str | int | datetime


@dataclass(frozen=True)
class HubSpec:
    """One hub to consume: where it is, the consumer group, and where to start without a checkpoint.

    ``starting_position`` applies only to partitions that have no checkpoint yet (a new deployment, a
    wiped checkpoint container). It defaults to ``"-1"``, the oldest event the hub still retains, so a
    fresh start replays the retention window (the store absorbs what it already holds) instead of the
    SDK's default ``"@latest"``, which silently skips everything retained (:func:`parse_starting_position`).
    """

    #: short name, used in logs, metrics and store source names (``activity``, ``keyvault``, ``sentinel``)
    name: str
    #: ``<namespace>.servicebus.windows.net``
    namespace: str
    eventhub: str
    consumer_group: str = "$Default"
    starting_position: str = DEFAULT_STARTING_POSITION

    @property
    def source(self) -> str:
        """The source name under which the hub's events are stored."""
        return f"eventhubs:{self.eventhub}"


def parse_starting_position(value: str) -> StartingPosition:
    """The SDK form of a configured starting position.

    ``"-1"`` or ``"earliest"``: the oldest retained event (the default); ``"@latest"`` or ``"latest"``: only
    events enqueued after the consumer starts (skips the retained ones: choose it knowingly); an integer:
    events after that sequence number; an ISO-8601 time with a zone (``2026-11-24T09:00:00Z``): events
    enqueued after it. Anything else is a :class:`ValueError` naming the value.
    """
    text = value.strip()
    lowered = text.lower()
    if lowered in ("-1", "earliest"):
        return "-1"
    if lowered in ("@latest", "latest"):
        return "@latest"
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"starting position {value!r}: expected -1 (earliest), @latest, a sequence number "
            "or an ISO-8601 time with a zone"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"starting position {value!r}: the time needs a zone (for example Z)")
    return when


class Checkpointer(Protocol):
    """What a batch needs of its partition: the SDK's ``PartitionContext`` is one."""

    @property
    def partition_id(self) -> str: ...

    async def update_checkpoint(self, event: EventData | None = None, **kwargs: Any) -> None: ...


@dataclass
class HubStats:
    """What one hub's consumer has done; exported by ``/metrics`` and ``/v1/status``."""

    running: bool = False
    batches: int = 0
    #: event bodies received (each may hold many records)
    bodies: int = 0
    #: new events stored, and records whose event the store already held (replays after a restart)
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    controls: int = 0
    checkpoints: int = 0
    checkpoint_failures: int = 0
    store_failures: int = 0
    #: receive callbacks without events (``max_wait_time`` passed): proof that a quiet partition is alive
    empty_waits: int = 0
    #: partitions the watchdog found silent for ``stall_after`` seconds, and consumer restarts for any reason
    stalls: int = 0
    restarts: int = 0
    #: partition id -> sequence number of the last checkpoint written
    checkpointed: dict[str, int] = field(default_factory=dict)
    #: why the consumer last failed (client error, store error); cleared when a batch commits
    last_error: str | None = None
    #: the last checkpoint failure, and since when (monotonic seconds) checkpoints have been failing;
    #: both cleared by the next checkpoint written (reliability A7: shown as an alarm, see :meth:`alarm`)
    checkpoint_error: str | None = None
    checkpoint_failing_since: float | None = None

    def checkpoint_failing_for(self, now: float | None = None) -> float:
        """Seconds since checkpoints started failing (0 while they are written)."""
        since = self.checkpoint_failing_since
        return 0.0 if since is None else (time.monotonic() if now is None else now) - since

    def alarm(self, hub: str) -> str | None:
        """The operator's view of a checkpoint outage, or None. Nothing is lost while it lasts (events are
        stored before their checkpoint), but a restart replays everything since the last checkpoint, and
        the checkpoint store also holds partition ownership."""
        if self.checkpoint_failing_since is None:
            return None
        return (
            f"event hub {hub}: checkpoints failing for {self.checkpoint_failing_for():.0f} s "
            f"({self.checkpoint_error}); events are stored, a restart would replay them"
        )

    def counters(self) -> dict[str, int]:
        """The monotonically increasing counts, by their short names."""
        return {
            "batches": self.batches,
            "bodies": self.bodies,
            "events": self.events,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "controls": self.controls,
            "checkpoints": self.checkpoints,
            "checkpoint_failures": self.checkpoint_failures,
            "store_failures": self.store_failures,
            "empty_waits": self.empty_waits,
            "stalls": self.stalls,
            "restarts": self.restarts,
        }


class PartitionActivity:
    """When each owned partition last heard from its receiver, for the watchdog (monotonic seconds).

    A callback (with events or, after ``max_wait_time``, without) is a sign of life; a partition whose
    batch is still being committed is *busy* and not silent, however long the store takes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}
        self._busy: set[str] = set()

    def opened(self, partition: str) -> None:
        self._last[partition] = self.clock()

    def closed(self, partition: str) -> None:
        self._last.pop(partition, None)
        self._busy.discard(partition)

    def begin(self, partition: str) -> None:
        self._busy.add(partition)
        self._last[partition] = self.clock()

    def end(self, partition: str) -> None:
        self._busy.discard(partition)
        self._last[partition] = self.clock()

    def owned(self) -> list[str]:
        return sorted(self._last)

    def silent(self, longer_than: float) -> dict[str, float]:
        """Owned, not busy partitions not heard from for more than ``longer_than`` s: id -> seconds."""
        now = self.clock()
        return {p: now - t for p, t in self._last.items() if p not in self._busy and now - t > longer_than}

    def reset(self) -> None:
        self._last.clear()
        self._busy.clear()


class BatchIngest:
    """One hub's batches: normalise, commit, hand over, checkpoint (see the module docstring)."""

    def __init__(
        self,
        spec: HubSpec,
        store: Store,
        stats: HubStats | None = None,
        *,
        offer: Callable[[Sequence[int], Sequence[Event]], None] | None = None,
        wake: Callable[[], None] | None = None,
        backlog: Callable[[], int] | None = None,
        max_backlog: int | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        activity: PartitionActivity | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.stats = stats if stats is not None else HubStats()
        self.activity = activity if activity is not None else PartitionActivity()
        self._offer = offer
        self._wake = wake
        self._backlog = backlog
        self._max_backlog = max_backlog
        self._max_record = max_record_bytes
        self._max_document = max_document_bytes
        #: one normalizer per partition: partitions' batches are handled concurrently, in worker threads
        self._normalizers: dict[str, BatchNormalizer] = {}

    async def handle(self, ctx: Checkpointer, events: Sequence[EventData]) -> None:
        """The ``on_event_batch`` callback: an empty batch is a sign of life, anything else is committed
        and then checkpointed. Returns once the checkpoint is written (or its failure counted)."""
        partition = ctx.partition_id
        if not events:
            self.stats.empty_waits += 1
            self.activity.end(partition)
            return
        self.activity.begin(partition)
        try:
            await self._hold_for_backlog()
            seqs, result = await self._commit(partition, events)
            if result.events and self._offer is not None:
                self._offer(seqs, result.events)
            if result.events and self._wake is not None:
                self._wake()
            await self._checkpoint(ctx, events[-1])
        finally:
            self.activity.end(partition)

    # -- the steps ----------------------------------------------------------------------------------------

    async def _hold_for_backlog(self) -> None:
        if self._backlog is None or self._max_backlog is None:
            return
        while await asyncio.to_thread(self._backlog) > self._max_backlog:
            await asyncio.sleep(BACKLOG_WAIT_SECONDS)

    async def _commit(self, partition: str, events: Sequence[EventData]) -> tuple[list[int], Result]:
        """Normalise and store the batch in one transaction, retrying a refusing store until it commits."""
        delay = 0.0
        while True:
            try:
                seqs, result = await asyncio.to_thread(self._store_batch, partition, events)
            except StoreError as exc:
                self.stats.store_failures += 1
                delay = min(max(delay * 2, 0.5), MAX_STORE_RETRY_SECONDS)
                message = f"cannot store a batch of partition {partition}: {exc}"
                level = logging.DEBUG if message == self.stats.last_error else logging.ERROR
                log.log(level, "%s: %s (retrying in %.1f s)", self.spec.name, message, delay)
                self.stats.last_error = message
                await asyncio.sleep(delay)
                continue
            stats = self.stats
            duplicates = seqs.count(0)
            stats.batches += 1
            stats.bodies += len(events)
            stats.events += len(seqs) - duplicates
            stats.duplicates += duplicates
            stats.dead_letters += len(result.dead)
            stats.controls += len(result.controls)
            stats.last_error = None
            if result.dead:
                log.warning(
                    "%s: partition %s: %d records dead-lettered (first: %s)",
                    self.spec.name,
                    partition,
                    len(result.dead),
                    result.dead[0].reason,
                )
            return seqs, result

    def _store_batch(self, partition: str, events: Sequence[EventData]) -> tuple[list[int], Result]:
        """(Worker thread.) Every body of the batch through the normalizer, then one store transaction."""
        normalizer = self._normalizers.get(partition)
        if normalizer is None:
            normalizer = BatchNormalizer(
                "auto", max_record_bytes=self._max_record, max_document_bytes=self._max_document
            )
            self._normalizers[partition] = normalizer
        out = Result()
        for event in events:
            label = f"{self.spec.source}/{partition}@{event.sequence_number}"
            part = normalizer.body(body_bytes(event), label)
            out.events += part.events
            out.controls += part.controls
            out.dead += part.dead
        seqs = self.store.accept(out.events, out.dead, self.spec.source)
        return seqs, out

    async def _checkpoint(self, ctx: Checkpointer, last: EventData) -> None:
        """Checkpoint after the commit; a failure is counted, the next batch's checkpoint covers this one."""
        try:
            await ctx.update_checkpoint(last)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the SDK surfaces storage errors of many kinds; none may stop ingestion
            self.stats.checkpoint_failures += 1
            self.stats.checkpoint_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.stats.checkpoint_failing_since is None:
                self.stats.checkpoint_failing_since = time.monotonic()
            log.warning(
                "%s: partition %s: checkpoint at sequence %s not written (events are stored; a restart "
                "replays them): %s: %s",
                self.spec.name,
                ctx.partition_id,
                last.sequence_number,
                type(exc).__name__,
                exc,
            )
            return
        self.stats.checkpoints += 1
        if self.stats.checkpoint_failing_since is not None:
            log.info("%s: checkpoints are written again", self.spec.name)
        self.stats.checkpoint_error = self.stats.checkpoint_failing_since = None
        if last.sequence_number is not None:
            self.stats.checkpointed[ctx.partition_id] = last.sequence_number


def body_bytes(event: EventData) -> bytes:
    """An event's body as bytes: the data sections joined (diagnostic settings send one UTF-8 JSON data
    section); a value or sequence body, which Azure's exporters do not send, as its JSON encoding."""
    if event.body_type == AmqpMessageBodyType.DATA:
        body = event.body
        if isinstance(body, bytes):
            return body
        return b"".join(body)  # type: ignore[arg-type]
    try:
        return orjson.dumps(event.body, default=str)
    except TypeError:
        return event.body_as_str().encode("utf-8", "replace")


__all__ = [
    "DEFAULT_STARTING_POSITION",
    "BatchIngest",
    "Checkpointer",
    "HubSpec",
    "HubStats",
    "PartitionActivity",
    "StartingPosition",
    "body_bytes",
    "parse_starting_position",
]

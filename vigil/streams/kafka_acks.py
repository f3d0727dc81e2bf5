"""When the detect stage may acknowledge an events-topic message, for :mod:`.kafka_app`.

An acknowledgement lets faust commit the message's offset, and a committed offset is not delivered again.
So it promises that the event's effect survives a crash: its counts, in a detector snapshot on the changelog
(:mod:`.kafka_state`), and what it produced (findings, alerts, intents), with the producer. This module keeps
the events that are processed but not yet acknowledged, per partition, and enforces the two rules that
promise needs beyond "the snapshot includes it":

* **Stale events are neither processed nor acknowledged.** On a rebalance (a worker stalled past its session
  timeout, a worker joining) faust clears its queues, but events fetched under the old assignment can still
  sit in the detect agent's take buffer and reach the stage after the revoke. Processed then, they restored
  their partition from the last *saved* snapshot and moved its offset past the events the dropped state had
  counted but not yet saved; when those came again from the committed offset they were skipped as covered,
  and their counts were lost: a window fired one event late, or not at all. (Reproduced with a worker
  stopped past its session timeout while events arrived, down to the finding of the killed-worker test's
  one CI failure: ``t.burst`` on ``e46`` instead of ``e31``.) An event is stale when it was fetched in a
  consumer generation at or before the one its partition was last revoked in: generations only grow, so
  every event fetched under a later assignment passes, whenever this worker hears of that assignment.
* **An event is acknowledged only once the changelog write of the snapshot that covers it is delivered.**
  faust flushes its producer before it commits, but that flush stops waiting for its send buffer, which
  the changelog record goes through, after 0.1 s without progress (``ProducerBuffer.flush_atmost``): a
  commit can then pass a snapshot not yet written, and a kill right after it would restore an older
  snapshot behind the committed offset, the events between the two never delivered again. Waiting for the
  write's own future closes that at no cost to the detect path: the events are acknowledged from its
  completion callback.

Acknowledging through the event (``event.ack()``) rather than the stream is what faust's stream does minus
its sensor calls, and it works from a callback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


class Acks:
    """Processed events of each partition awaiting acknowledgement, the changelog write each waits for, and
    the generation each revoked partition was revoked in."""

    def __init__(self) -> None:
        self._pending: dict[int, list[Any]] = {}
        #: the latest changelog write of each partition's snapshot
        self._writes: dict[int, asyncio.Future[Any]] = {}
        #: partition -> consumer generation it was last revoked in (events fetched up to it are stale)
        self._revoked_in: dict[int, int] = {}
        #: changelog writes that failed (their events stay unacknowledged: delivered again after a restart)
        self.failed_writes = 0

    def current(self, message: Any) -> bool:
        """Whether ``message`` was fetched under this worker's current assignment of its partition."""
        revoked = self._revoked_in.get(message.partition)
        fetched_in = getattr(message, "generation_id", None)
        return revoked is None or fetched_in is None or fetched_in > revoked

    def add(self, event: Any) -> int | None:
        """Hold a processed event (its outputs are with the producer) until its state is saved; its
        partition, or None when it went stale meanwhile (revoked while its outputs were produced)."""
        message = event.message
        if not self.current(message):
            return None
        self._pending.setdefault(message.partition, []).append(event)
        return int(message.partition)

    def partitions(self) -> list[int]:
        """Partitions with events awaiting acknowledgement."""
        return list(self._pending)

    def wrote(self, partition: int, write: asyncio.Future[Any]) -> None:
        """``write`` sends the partition's newest snapshot to the changelog."""
        self._writes[partition] = write
        write.add_done_callback(functools.partial(self._report, partition))

    def release(self, partition: int) -> list[Any]:
        """The partition's events, now covered by its saved state: those to acknowledge now. While the
        snapshot's changelog write is in flight they are acknowledged when it is delivered instead."""
        events = self._pending.pop(partition, [])
        write = self._writes.get(partition)
        if not events or write is None:
            return events
        if not write.done():
            write.add_done_callback(functools.partial(self._delivered, partition, events))
            return []
        return events if _ok(write) else []

    def revoke(self, partitions: Iterable[int], generation: int) -> None:
        """The partitions are revoked: forget their events (the next owner gets them from the committed
        offset) and treat everything fetched up to ``generation`` as stale."""
        for p in partitions:
            self._pending.pop(p, None)
            self._writes.pop(p, None)
            self._revoked_in[p] = generation

    def _delivered(self, partition: int, events: list[Any], write: asyncio.Future[Any]) -> None:
        if _ok(write):
            for event in events:
                if self.current(event.message):  # (not if the partition was revoked in the meantime)
                    event.ack()

    def _report(self, partition: int, write: asyncio.Future[Any]) -> None:
        if not _ok(write):
            self.failed_writes += 1
            log.error(
                "partition %d: the detector state could not be written to the changelog (%s); the events "
                "it covers stay unacknowledged and are processed again after a restart",
                partition,
                "cancelled" if write.cancelled() else write.exception(),
            )


def _ok(write: asyncio.Future[Any]) -> bool:
    """Whether a finished changelog write was delivered."""
    return not write.cancelled() and write.exception() is None

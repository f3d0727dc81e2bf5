"""A recorded Event Hub for tests: the real SDK consumer client with only its AMQP link replaced.

No Event Hubs emulator runs without Docker (reference/azure.md §7.2), so :class:`RecordedHubClient`
subclasses the real ``azure.eventhub.aio.EventHubConsumerClient`` and overrides the two calls that would
open an AMQP connection: ``get_partition_ids`` and ``_create_consumer`` (the per-partition link). Everything
else is the SDK's own code: the event processor, the ownership manager (load balancing through the
checkpoint store), the choice of each partition's start (checkpoint, else the starting position), the
``PartitionContext`` whose ``update_checkpoint`` writes the Blob checkpoint.

:class:`RecordedLink` plays the service side of one partition's link: it reads the filter the SDK builds
(``amqp.annotation.x-opt-offset > '…'``, the same selector the real link sends) to find where to start, then
delivers the recorded bodies as real ``EventData`` (built the way the SDK builds received events, from an
AMQP message with the sequence number, offset and enqueued time annotations), in batches, with an empty
callback after ``max_wait_time`` of silence, like the real receiver. A link can be told to hang (receive
nothing and never call back), which is what a stalled receiver looks like.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.eventhub import EventData
from azure.eventhub._constants import PROP_OFFSET, PROP_SEQ_NUMBER, PROP_TIMESTAMP
from azure.eventhub._pyamqp.message import Message
from azure.eventhub._utils import event_position_selector
from azure.eventhub.aio import CheckpointStore, EventHubConsumerClient, EventHubSharedKeyCredential

NAMESPACE = "evhns-vigil-weu.servicebus.windows.net"
#: offsets are byte positions in the partition; recorded events are this far apart
OFFSET_STEP = 1000
_SELECTOR = re.compile(r"amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time) (>=?) '(.*)'")
_EPOCH = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def recorded_event(body: bytes, sequence_number: int, enqueued: datetime) -> EventData:
    """A received ``EventData``: an AMQP data message with the broker's annotations, as the link makes it."""
    message = Message(
        data=[body],
        message_annotations={
            PROP_SEQ_NUMBER: sequence_number,
            PROP_OFFSET: str(sequence_number * OFFSET_STEP).encode(),
            PROP_TIMESTAMP: int(enqueued.timestamp() * 1000),
        },
    )
    return EventData._from_message(message)  # the SDK's own constructor for received events


@dataclass
class RecordedPartition:
    """One partition's retained events (sequence numbers from 0)."""

    bodies: list[bytes] = field(default_factory=list)
    #: the links hang (no events, no callbacks) while this is set
    stalled: bool = False

    def append(self, body: bytes) -> None:
        self.bodies.append(body)

    def event(self, seq: int) -> EventData:
        return recorded_event(self.bodies[seq], seq, _EPOCH + timedelta(seconds=seq))

    def first_after(self, kind: str, op: str, value: str) -> int:
        """The first sequence number the selector ``x-opt-<kind> <op> '<value>'`` admits."""
        inclusive = op == ">="
        if kind == "offset":
            if value == "-1":
                return 0
            if value == "@latest":
                return len(self.bodies)
            seq = int(value) // OFFSET_STEP
        elif kind == "sequence-number":
            seq = int(value)
        else:  # enqueued time, in ms
            when = datetime.fromtimestamp(int(value) / 1000, UTC)
            seq = int((when - _EPOCH).total_seconds())
            if seq < 0:
                return 0
        return seq if inclusive else seq + 1


@dataclass
class RecordedHub:
    """Partitions by id; what every :class:`RecordedHubClient` of this hub reads."""

    name: str
    partitions: dict[str, RecordedPartition]

    @classmethod
    def of(cls, name: str, bodies: Mapping[str, Iterable[bytes]]) -> RecordedHub:
        return cls(name, {pid: RecordedPartition(list(b)) for pid, b in bodies.items()})


class RecordedLink:
    """Stands in for the SDK's per-partition ``EventHubConsumer`` (its AMQP link)."""

    def __init__(
        self,
        partition: RecordedPartition,
        event_position: str | int | datetime,
        inclusive: bool,
        on_event_received: Callable[[list[EventData]], Awaitable[None]],
    ) -> None:
        match = _SELECTOR.fullmatch(event_position_selector(event_position, inclusive).decode())
        assert match is not None, event_position
        self.partition = partition
        self.next_seq = partition.first_after(match.group(1), match.group(2), match.group(3))
        self._on_event_received = on_event_received
        self._closed = asyncio.Event()

    async def receive(self, batch: bool, max_batch_size: int, max_wait_time: float | None) -> None:
        assert batch, "the source uses receive_batch"
        loop = asyncio.get_running_loop()
        last_callback = loop.time()
        while not self._closed.is_set():
            if self.partition.stalled:
                await self._closed.wait()  # a dead link: no events, no callbacks, no error
                return
            end = min(len(self.partition.bodies), self.next_seq + max_batch_size)
            if end > self.next_seq:
                events = [self.partition.event(s) for s in range(self.next_seq, end)]
                self.next_seq = end
                await self._on_event_received(events)
                last_callback = loop.time()
            elif max_wait_time and loop.time() - last_callback > max_wait_time:
                await self._on_event_received([])
                last_callback = loop.time()
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._closed.set()


class RecordedHubClient(EventHubConsumerClient):
    """The SDK's consumer client over a :class:`RecordedHub` (see the module docstring)."""

    def __init__(self, hub: RecordedHub, checkpoint_store: CheckpointStore, **kwargs: Any) -> None:
        super().__init__(
            NAMESPACE,
            hub.name,
            kwargs.pop("consumer_group", "$Default"),
            EventHubSharedKeyCredential("RootManageSharedAccessKey", "not-a-real-key"),
            checkpoint_store=checkpoint_store,
            **kwargs,
        )
        self.hub = hub
        self.links: dict[str, RecordedLink] = {}

    async def get_partition_ids(self) -> list[str]:
        return sorted(self.hub.partitions)

    def _create_consumer(  # type: ignore[override]
        self,
        consumer_group: str,
        partition_id: str,
        event_position: str | int | datetime,
        on_event_received: Callable[[list[EventData]], Awaitable[None]],
        **kwargs: Any,
    ) -> RecordedLink:
        link = RecordedLink(
            self.hub.partitions[partition_id],
            event_position,
            bool(kwargs.get("event_position_inclusive", False)),
            on_event_received,
        )
        self.links[partition_id] = link
        return link

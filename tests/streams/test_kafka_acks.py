"""When the detect stage acknowledges events (:mod:`vigil.streams.kafka_acks`), driven through the app's own
``detect_batch``, ``flush`` and revoke signal with messages shaped like faust's (partition, offset, the
consumer generation they were fetched in): the interleavings a rebalance or a slow producer make, each in a
fixed order. Findings are compared with a single pass of the detector over the same events.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from faust.types import TP

from tests.detectors.stateful_helpers import load
from tests.streams.test_kafka_agents import RULES, Sent, reads
from vigil.detectors.engine import Detector
from vigil.detectors.finding import Finding, finding_id
from vigil.events.model import Event, encode_event
from vigil.streams.kafka_acks import Acks
from vigil.streams.kafka_app import Hooks, KafkaApp
from vigil.streams.kafka_settings import KafkaSettings
from vigil.streams.kafka_stages import Out


@dataclass
class Message:
    """What the stage reads of a faust ``ConsumerMessage``."""

    partition: int
    offset: int
    generation_id: int
    topic: str = "t-events"


@dataclass
class Fetched:
    """A faust event: the message, its value, and whether it was acknowledged."""

    message: Message
    value: bytes
    acked: bool = False

    def ack(self) -> bool:
        self.acked = True
        return True


def fetched(offset: int, event: Event, generation: int, partition: int = 0) -> Fetched:
    return Fetched(Message(partition, offset, generation), encode_event(event))


def make(tmp_path: Path, sent: Any, state_interval: float) -> KafkaApp:
    settings = KafkaSettings(
        broker="kafka://127.0.0.1:9",
        batch_within=0.01,
        state_interval=state_interval,
        live_timers=False,
        topic_prefix="t",
    )
    app = KafkaApp(settings, load(tmp_path, RULES), hooks=Hooks(send=sent))
    app.app.finalize()
    return app


class Writes:
    """Stands in for the changelog producer: each snapshot write is a future the test settles."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    def __call__(self, partition: int, key: bytes, body: bytes, **_: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def deliver(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(None)


def found(sent: Sent) -> list[str]:
    """Ids of the findings produced, as the store keys them."""
    return [finding_id(msgspec.json.decode(m.value, type=Finding)) for m in sent.on("t-findings")]


def reference(app: KafkaApp, events: list[Event]) -> list[str]:
    """Finding ids of one pass of a fresh detector over ``events``."""
    det = Detector(app.rules.rules)
    return [finding_id(f) for e in events for f in det.process(e)]


def test_events_fetched_before_a_revoke_are_left_to_the_next_assignment(tmp_path: Path) -> None:
    """The killed-worker test's one-event-late window, in a fixed order: a rebalance revokes the partition
    while the detect agent still holds an event fetched under the old assignment. Processed, it restored the
    partition from the last saved state (without the two reads the dropped state had counted) and moved
    the offset past them, so when they came again from the committed offset they were skipped as covered:
    the burst on the third read was never found."""
    sent = Sent()
    app = make(tmp_path, sent, state_interval=60)  # (nothing saved in between: the worst case)
    events = reads(4, "/r/1")
    app.app.consumer_generation_id = 1

    async def main() -> Fetched:
        await app.detect_batch([fetched(0, events[0], 1), fetched(1, events[1], 1)])
        await app.app.on_partitions_revoked.send({TP("t-events", 0), TP("t-raw", 0)})
        stale = fetched(2, events[2], 1)  # fetched before the revoke, taken after it
        await app.detect_batch([stale])
        app.app.consumer_generation_id = 2  # assigned again: everything from the committed offset
        await app.detect_batch([fetched(i, e, 2) for i, e in enumerate(events)])
        return stale

    stale = asyncio.run(main())
    want = reference(app, events)
    assert want and found(sent) == want  # the third read, once
    assert not stale.acked and app.counters.stale == 1


def test_events_are_acknowledged_once_the_changelog_has_their_state(tmp_path: Path) -> None:
    """faust's flush before a commit may give up on the changelog record (0.1 s); the acknowledgement
    waits for the record's own delivery, and never comes for a write that failed."""
    sent = Sent()
    app = make(tmp_path, sent, state_interval=0)
    writes = Writes()
    app.state.send_changelog = writes  # type: ignore[method-assign]

    async def main() -> tuple[list[Fetched], list[Fetched]]:
        first = [fetched(0, reads(1)[0], 0)]
        await app.detect_batch(first)
        assert len(writes.futures) == 1 and not first[0].acked  # saved, the write in flight
        writes.deliver()
        await asyncio.sleep(0)
        lost = [fetched(1, reads(1, start=1)[0], 0)]
        await app.detect_batch(lost)
        writes.futures[-1].set_exception(OSError("broker gone"))
        await asyncio.sleep(0)
        return first, lost

    first, lost = asyncio.run(main())
    assert first[0].acked
    assert not lost[0].acked and app.acks.failed_writes == 1


def test_the_state_timer_does_not_acknowledge_events_whose_findings_are_still_being_produced(
    tmp_path: Path,
) -> None:
    """A slow producer (its buffer full) holds the detect step in ``send``; the state timer runs meanwhile.
    Acknowledged then, a commit could pass events whose findings a kill would lose."""
    gate = asyncio.Event()
    messages: list[tuple[str, Out]] = []

    async def slow(topic: str, message: Out) -> None:
        await gate.wait()
        messages.append((topic, message))

    app = make(tmp_path, slow, state_interval=0)
    writes = Writes()
    app.state.send_changelog = writes  # type: ignore[method-assign]
    batch = [fetched(i, e, 0) for i, e in enumerate(reads(3))]  # the third read fires

    async def main() -> list[bool]:
        step = asyncio.create_task(app.detect_batch(batch))
        await asyncio.sleep(0.01)
        await app.flush()  # the timer, while the finding is still on its way
        writes.deliver()
        await asyncio.sleep(0)
        during = [e.acked for e in batch]
        gate.set()
        await step
        writes.deliver()
        await asyncio.sleep(0)
        return during

    during = asyncio.run(main())
    assert during == [False, False, False]
    assert [t for t, _ in messages].count("t-findings") == 1 and all(e.acked for e in batch)


def test_a_partition_revoked_while_its_outputs_are_produced_leaves_its_events_unacknowledged(
    tmp_path: Path,
) -> None:
    sent = Sent()
    gate = asyncio.Event()
    app = make(tmp_path, sent, state_interval=0)

    async def slow(topic: str, message: Out) -> None:
        await gate.wait()
        await sent(topic, message)

    app.hooks.send = slow
    batch = [fetched(i, e, 3) for i, e in enumerate(reads(3))]
    app.app.consumer_generation_id = 3

    async def main() -> None:
        step = asyncio.create_task(app.detect_batch(batch))
        await asyncio.sleep(0.01)
        app.revoke({0})
        gate.set()
        await step

    asyncio.run(main())
    assert not any(e.acked for e in batch) and app.acks.partitions() == []
    assert 0 not in app.detectors.parts  # the next owner starts from the changelog


def test_only_events_fetched_up_to_the_revoking_generation_are_stale() -> None:
    """Generations only grow: an event fetched under any later assignment is current, whether or not this
    worker has heard of that assignment yet (faust may deliver before its assigned signal)."""
    acks = Acks()
    assert acks.current(Message(0, 5, 1))
    acks.revoke([0], 4)
    assert not acks.current(Message(0, 5, 4)) and not acks.current(Message(0, 5, 2))
    assert acks.current(Message(0, 5, 5)) and acks.current(Message(1, 5, 4))

"""The detect stage across faust's eager rebalances (:class:`vigil.streams.kafka_state.Ownership`), driven
through the app's own ``detect_batch``, ``flush`` and its revoke/assign signals, with messages shaped like
faust's (partition, offset, and the consumer generation they were fetched in), each interleaving in a fixed
order. Findings are compared with one pass of a fresh detector over the same events.
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
from vigil.streams.kafka_app import Hooks, KafkaApp
from vigil.streams.kafka_settings import KafkaSettings
from vigil.streams.kafka_state import Ownership, PartitionDetectors


@dataclass
class Message:
    """What the stage reads of a faust ``ConsumerMessage``."""

    partition: int
    offset: int
    generation_id: int
    topic: str = "t-events"


@dataclass
class Fetched:
    """A faust event: its message, its value, and whether it was acknowledged."""

    message: Message
    value: bytes
    acked: bool = False

    def ack(self) -> bool:
        self.acked = True
        return True


def fetched(offset: int, event: Event, generation: int, partition: int = 0) -> Fetched:
    return Fetched(Message(partition, offset, generation), encode_event(event))


def make(tmp_path: Path, sent: Sent, state_interval: float) -> KafkaApp:
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


class Changelog:
    """Stands in for the table's changelog producer: which partitions' snapshots were written."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def __call__(self, partition: int, key: bytes, body: bytes, **_: Any) -> None:
        self.writes.append(partition)


async def revoke(app: KafkaApp, *partitions: int) -> None:
    """faust's eager revoke: every partition of the old assignment, raw topic included."""
    tps = {TP("t-events", p) for p in partitions} | {TP("t-raw", p) for p in partitions}
    await app.app.on_partitions_revoked.send(tps)


async def assign(app: KafkaApp, generation: int, *partitions: int) -> None:
    app.app.consumer_generation_id = generation  # faust sets it before it signals the assignment
    tps = {TP("t-events", p) for p in partitions} | {TP("t-raw", p) for p in partitions}
    await app.app.on_partitions_assigned.send(tps)


def found(sent: Sent) -> list[str]:
    """Ids of the findings produced, as the store keys them."""
    return [finding_id(msgspec.json.decode(m.value, type=Finding)) for m in sent.on("t-findings")]


def reference(app: KafkaApp, events: list[Event]) -> list[str]:
    det = Detector(app.rules.rules)
    return [finding_id(f) for e in events for f in det.process(e)]


def test_an_event_fetched_before_a_revoke_continues_the_kept_state(tmp_path: Path) -> None:
    """The killed-worker test's rare failure, in a fixed order: a rebalance revokes and gives back the same
    partition while the detect agent still holds an event fetched under the old assignment. The old code
    dropped the state on the revoke, so that event restored the partition from the last save (without the
    two unsaved reads) and moved the offset past them; when they came again from the committed offset they
    were skipped as covered, and the burst on the third read was never found."""
    sent = Sent()
    app = make(tmp_path, sent, state_interval=60)  # nothing saved in between: the worst case
    events = reads(4, "/r/1")

    async def main() -> None:
        await assign(app, 1, 0)
        await app.detect_batch(None, [fetched(0, events[0], 1), fetched(1, events[1], 1)])
        await revoke(app, 0)
        await app.detect_batch(None, [fetched(2, events[2], 1)])  # fetched before the revoke
        await assign(app, 2, 0)
        # the new assignment reads again from the committed offset
        await app.detect_batch(None, [fetched(i, e, 2) for i, e in enumerate(events)])

    asyncio.run(main())
    want = reference(app, events)
    assert want and found(sent) == want  # the third read's burst, once
    assert app.detectors.skipped == 3 and app.ownership.stale == 0


def test_a_partition_that_moves_away_gets_no_write_or_acknowledgement_after_its_revoke(
    tmp_path: Path,
) -> None:
    sent = Sent()
    app = make(tmp_path, sent, state_interval=0)  # every step saves
    changelog = Changelog()
    app.state.send_changelog = changelog  # type: ignore[method-assign]
    events = reads(4, "/r/1")

    async def main() -> tuple[list[Fetched], list[Fetched]]:
        await assign(app, 1, 0, 1)
        first = [fetched(0, events[0], 1)]
        await app.detect_batch(None, first)
        assert changelog.writes == [0] and first[0].acked
        await revoke(app, 0, 1)
        during = [fetched(1, events[1], 1)]  # still held until the assignment says otherwise
        await app.detect_batch(None, during)
        await app.flush()  # the state timer
        await assign(app, 2, 1)  # partition 0 went to another worker
        after = [fetched(2, events[2], 1)]
        await app.detect_batch(None, after)
        return during, after

    during, after = asyncio.run(main())
    assert changelog.writes == [0]  # nothing written for partition 0 after the revoke
    # the new owner processes them from the committed offset
    assert not during[0].acked and not after[0].acked
    assert 0 not in app.detectors.parts and app.ownership.stale == 1
    assert found(sent) == []


def test_a_partition_assigned_anew_ignores_events_from_its_previous_stint(tmp_path: Path) -> None:
    sent = Sent()
    app = make(tmp_path, sent, state_interval=0)
    events = reads(3, "/r/1")
    other = make(tmp_path, Sent(), state_interval=0)

    async def main() -> None:
        # another worker held partition 0 meanwhile and saved its state after the first two reads
        await other.detect_batch(None, [fetched(i, e, 5) for i, e in enumerate(events[:2])])
        await assign(app, 1, 1)
        await assign(app, 3, 0, 1)
        app.state.data[b"0"] = other.state.data[b"0"]  # what recovery put in the table
        # fetched here in generation 2 (an earlier stint, offsets the state no longer matches), then the
        # new stint from the committed offset
        await app.detect_batch(None, [fetched(5, events[2], 2)])
        await app.detect_batch(None, [fetched(2, events[2], 3)])

    asyncio.run(main())
    assert app.ownership.stale == 1
    assert found(sent) == reference(app, events)
    assert PartitionDetectors.covered(app.state.data[b"0"]) == 2


def test_a_partition_back_after_skipped_generations_is_restored_not_kept(tmp_path: Path) -> None:
    """Out of the group in between (a session timeout), another worker may have owned the partition,
    counted more and saved: the detector kept from before would miss those counts."""
    sent = Sent()
    app = make(tmp_path, sent, state_interval=60)
    other = make(tmp_path, Sent(), state_interval=0)
    events = reads(3, "/r/1")

    async def main() -> None:
        await assign(app, 1, 0)
        await app.detect_batch(None, [fetched(0, events[0], 1)])  # not saved
        await revoke(app, 0)
        # generation 2, without this worker: the other one processes offsets 0 and 1 and saves
        await other.detect_batch(None, [fetched(i, e, 2) for i, e in enumerate(events[:2])])
        app.state.data[b"0"] = other.state.data[b"0"]  # what the changelog holds now
        await assign(app, 3, 0)
        await app.detect_batch(None, [fetched(2, events[2], 3)])

    asyncio.run(main())
    assert found(sent) == reference(app, events)  # the third read's burst, from the other worker's counts


def test_an_assignment_whose_signal_comes_late_is_taken_from_the_consumer(tmp_path: Path) -> None:
    """faust may resume the streams before its assigned signal reaches the app: the detect stage asks the
    consumer for the assignment of the generation the events were fetched in."""
    sent = Sent()
    app = make(tmp_path, sent, state_interval=60)
    events = reads(3, "/r/1")

    class Consumer:  # (faust's consumer, as far as the stage asks it)
        def assignment(self) -> set[TP]:
            return {TP("t-events", 0), TP("t-events", 1), TP("t-raw", 0)}

    async def main() -> None:
        await assign(app, 1, 0)
        await app.detect_batch(None, [fetched(0, events[0], 1)])
        await revoke(app, 0)
        app.app.consumer = Consumer()  # type: ignore[assignment]
        app.app.consumer_generation_id = 2  # assigned; the signal is still on its way
        await app.detect_batch(None, [fetched(i, e, 2) for i, e in enumerate(events)])
        await assign(app, 2, 0, 1)  # the signal, late: nothing changes

    asyncio.run(main())
    assert found(sent) == reference(app, events)
    assert app.ownership.owned == {0, 1} and app.ownership.since == {0: 1, 1: 2}
    assert not app.ownership.rebalancing


def test_ownership_keeps_partitions_only_across_consecutive_generations() -> None:
    own = Ownership()
    assert own.current(3, 7)  # no assignment seen: everything is current
    assert own.assign({0}, 4) == set()
    assert own.current(0, 4) and not own.current(0, 3) and not own.current(1, 4)
    own.revoke()
    assert own.rebalancing
    assert own.assign({0, 1}, 5) == set() and not own.rebalancing and own.since == {0: 4, 1: 5}
    assert own.assign({0, 1}, 5) == set()  # the same assignment again (the signal after a look-up)
    assert own.assign({1}, 6) == {0} and own.since == {1: 5}
    assert own.assign({1}, 9) == {1} and own.since == {1: 9}  # generations skipped: nothing kept


def test_faust_reports_a_stall_after_the_configured_time(tmp_path: Path) -> None:
    settings = KafkaSettings(broker="kafka://127.0.0.1:9", topic_prefix="t", stall_after=42.0)
    app = KafkaApp(settings, load(tmp_path, RULES))
    assert app.app.conf.broker_commit_livelock_soft_timeout == 42.0
    assert app.app.conf.stream_processing_timeout == 42.0

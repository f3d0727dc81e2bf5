"""The faust app of ``vigil worker``: Vigil's pipeline over Kafka or the Event Hubs Kafka endpoint.

Topics (``<prefix>-NAME``, every one with ``kafka.partitions`` partitions)::

    raw ──normalise──> events ──detect──> findings   (keyed by rule+group: one incident, one partition)
     (any key)        (keyed by              ├──> alerts     (keyed by the page's dedup key)
                       resource id)          └──> intents ──act──> response engine (decide, audit, run)
                                                  (keyed by target: one worker owns each target)
    anything unusable ──> deadletter (with the reason)

The stages are :mod:`.kafka_stages` (which call the embedded runner's functions); this module only wires
them to topics. Detector state lives in the changelog-backed table ``detector-state`` (one key per
partition, :mod:`.kafka_state`), saved every ``kafka.state_interval`` seconds; events are acknowledged
only once the state that includes them is saved, so the committed offsets never run ahead of the state.

Delivery is ``at_least_once`` (faust's exactly-once needs transactions that the test broker lacks and that
faust has open bugs in, reference/dependencies.md §1); effects are exactly-once through the ids the
stages already have: event ids (de-duplicated per partition), finding ids (the store keeps each once),
action idempotency keys (the response engine creates one action per key), alert dedup keys (one page).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import faust
import msgspec
import orjson
from aiokafka.partitioner import DefaultPartitioner, murmur2  # type: ignore[import-untyped]

from vigil.alerts.model import Alert
from vigil.detectors.finding import Finding
from vigil.rules.model import RuleSet
from vigil.streams.kafka_settings import KafkaSettings, credentials
from vigil.streams.kafka_stages import Act, Detect, Normalise, Out, Submit
from vigil.streams.kafka_state import Ownership, PartitionDetectors

log = logging.getLogger(__name__)

#: the logical topics, in the order a message travels
TOPICS = ("raw", "events", "findings", "intents", "alerts", "deadletter")
STATE_TABLE = "detector-state"


def changelog_topic(settings: KafkaSettings) -> str:
    """The name faust gives the detector-state table's changelog (create it when topics are not declared)."""
    return f"{settings.app_id}-{STATE_TABLE}-changelog"


def topic_names(settings: KafkaSettings) -> list[str]:
    """Every topic a worker uses, changelog included."""
    return [settings.topic(t) for t in TOPICS] + [changelog_topic(settings)]


@dataclass
class Hooks:
    """What the worker does at the ends of the pipeline; None leaves that topic to other consumers."""

    #: decide and act on proposals (the response engine's submit)
    submit: Submit | None = None
    #: keep findings (the store: each finding once, incidents filed)
    record: Callable[[list[Finding]], None] | None = None
    #: deliver an alert (grouping, routing, the outbox)
    deliver: Callable[[Alert], Awaitable[None]] | None = None
    #: replaces the producer (tests without a broker): (topic name, message)
    send: Callable[[str, Out], Awaitable[None]] | None = None


@dataclass
class Counters:
    raw: int = 0
    events: int = 0
    findings: int = 0
    intents: int = 0
    actions: int = 0
    alerts: int = 0
    dead_letters: int = 0
    saves: int = 0
    #: messages the producer could not deliver
    failed: int = 0
    sent: dict[str, int] = field(default_factory=dict)


class KafkaApp:
    """The faust app, its topics, its state table and its agents, for one rule set."""

    def __init__(
        self,
        settings: KafkaSettings,
        rules: RuleSet,
        *,
        hooks: Hooks | None = None,
        lateness: timedelta = timedelta(minutes=5),
        max_keys: int = 1_000_000,
        fmt: str = "auto",
        base_url: str = "",
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.hooks = hooks or Hooks()
        self.counters = Counters()
        app = self.app = faust.App(
            settings.app_id,
            broker=settings.broker,
            broker_credentials=credentials(settings),
            store=settings.table_store,
            processing_guarantee="at_least_once",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replicas,
            topic_allow_declare=settings.declare_topics,
            topic_disable_leader=True,
            table_standby_replicas=settings.standby_replicas,
            broker_session_timeout=settings.session_timeout,
            broker_heartbeat_interval=settings.heartbeat_interval,
            broker_commit_interval=settings.commit_interval,
            # faust's own monitor: an error when a partition's commits stop moving while it is processed,
            # when one event takes this long, or when fetches stop (faust's default is 5 minutes)
            broker_commit_livelock_soft_timeout=settings.stall_after,
            stream_processing_timeout=settings.stall_after,
            web_enabled=False,
            autodiscover=False,
            # Events wait for their state to be saved before they are acknowledged, and faust stops the
            # timer that saves it before it waits for streams to drain: not waiting is what is safe
            # here (unacknowledged events are processed again, from the saved state, by the next owner).
            stream_wait_empty=False,
            # batch what the agents produce: a broker fetch returns one record batch per partition,
            # so one-record batches would cap a downstream agent at one event per fetch
            producer_linger=0.005,
            # one record batch holds what a step produces for a partition: fewer produce requests, and a
            # broker that returns one batch per partition per fetch (librdkafka's mock) hands over more
            producer_max_batch_size=512 * 1024,
            producer_partitioner=CachedPartitioner(),
        )
        self.topics = {
            name: app.topic(
                settings.topic(name),
                partitions=settings.partitions,
                key_serializer="raw",
                value_serializer="raw",
            )
            for name in TOPICS
        }
        self._names = {name: settings.topic(name) for name in TOPICS}
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.state = app.Table(
            STATE_TABLE,
            partitions=settings.partitions,
            # raw bytes both ways: recovery decodes with the changelog topic's own serializers
            changelog_topic=app.topic(
                changelog_topic(settings),
                partitions=settings.partitions,
                compacting=True,
                deleting=False,
                **raw,  # type: ignore[arg-type]
            ),
            schema=faust.Schema(**raw),  # type: ignore[arg-type]
        )
        self.detectors = PartitionDetectors(
            rules.rules, load=self._load, lateness=lateness, live=settings.live_timers, max_keys=max_keys
        )
        self.normaliser = Normalise(fmt, settings.partition_key)
        self.detector = Detect(rules, self.detectors, base_url=base_url)
        self.act = Act(lambda: self.rules, self._submit)
        #: events of each partition processed but not yet covered by saved state (acknowledged after)
        self._unacked: dict[int, list[Any]] = {}
        #: which events partitions are held here, and since when (kept across a revoke, see Ownership)
        self.ownership = Ownership()
        self._detect_stream: Any = None
        self._agents()

    # -- wiring ----------------------------------------------------------------------------------------

    def _agents(self) -> None:
        app, topics, s = self.app, self.topics, self.settings

        @app.agent(topics["raw"], name="vigil.normalise")
        async def normalise(stream: Any) -> AsyncIterator[int]:
            # a batch at a time: acknowledged (by take) only after its events were handed to the producer
            async for batch in stream.take_events(s.batch, within=s.batch_within):
                out: list[Out] = []
                for event in batch:
                    msg = event.message
                    source = f"kafka:{msg.topic}/{msg.partition}@{msg.offset}"
                    out += self.normaliser.run(_bytes(event.value), source)
                self.counters.raw += len(batch)
                await self.send(out)
                yield len(out)

        @app.agent(topics["events"], name="vigil.detect")
        async def detect(stream: Any) -> AsyncIterator[int]:
            self._detect_stream = stream
            async for batch in stream.noack_take(s.batch, within=s.batch_within):
                yield await self.detect_batch(stream, batch)

        @app.agent(topics["intents"], name="vigil.act")
        async def act(stream: Any) -> AsyncIterator[int]:
            async for batch in stream.take(s.batch, within=s.batch_within):
                yield await self.act_batch(batch)

        @app.agent(topics["findings"], name="vigil.record")
        async def record(stream: Any) -> AsyncIterator[int]:
            async for batch in stream.take(s.batch, within=s.batch_within):
                found = [_finding(v) for v in batch]
                if self.hooks.record is not None:
                    self.hooks.record(found)
                yield len(found)

        @app.agent(topics["alerts"], name="vigil.alerts")
        async def alerts(stream: Any) -> AsyncIterator[int]:
            async for value in stream:
                self.counters.alerts += 1
                if self.hooks.deliver is not None:
                    await self.hooks.deliver(Alert.from_json(orjson.loads(_bytes(value))))
                yield 1

        async def save_state() -> None:
            await self.flush()

        app.timer(max(0.2, s.state_interval or s.batch_within), name="vigil.state")(save_state)

        async def revoked(sender: Any, revoked: set[Any], **_: Any) -> None:
            # state and pending acknowledgements stay until the assignment says which partitions remain
            if any(tp.topic == s.topic("events") for tp in revoked):
                self.ownership.revoke()

        async def assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
            self.assign(self._events_partitions(assigned), self.app.consumer_generation_id)

        app.on_partitions_revoked.connect(revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(assigned)  # type: ignore[arg-type]

        self.normalise_agent, self.detect_agent, self.act_agent = normalise, detect, act
        self.record_agent, self.alerts_agent = record, alerts

    # -- the stages --------------------------------------------------------------------------------------

    async def detect_batch(self, stream: Any, batch: Sequence[Any]) -> int:
        """Detect over one batch of events-topic events, produce what it found, save and acknowledge."""
        out: list[Out] = []
        touched: set[int] = set()
        own = self.ownership
        if own.owned is not None and own.generation != self.app.consumer_generation_id:
            # faust assigned anew and resumed the streams before its signal reached this agent
            held = self._events_partitions(self.app.consumer.assignment())
            self.assign(held, self.app.consumer_generation_id)
        taken = 0
        for event in batch:
            msg = event.message
            if not own.current(msg.partition, getattr(msg, "generation_id", None)):
                own.stale += 1  # its owner reads it again from the committed offset
                continue
            out += self.detector.run(msg.partition, msg.offset, _bytes(event.value), msg.topic)
            self._unacked.setdefault(msg.partition, []).append(event)
            touched.add(msg.partition)
            taken += 1
        if self.settings.live_timers:
            out += self.detector.tick()
        self.counters.events += taken
        await self.send(out)
        await self.flush(stream, touched)
        return len(out)

    async def flush(self, stream: Any = None, partitions: Sequence[int] | set[int] | None = None) -> None:
        """Save the state of partitions that are due and acknowledge the events it covers (also on a
        timer, so a quiet partition's last events are committed too). Nothing while a rebalance is under
        way: a partition about to move must not get a write from this worker after its new owner read it."""
        stream = stream or self._detect_stream
        if partitions is None:
            if self.settings.live_timers and not self.ownership.rebalancing:
                await self.send(self.detector.tick())
            partitions = list(self._unacked)
        # checked after the last await: a revoke may arrive while the tick's findings are produced, and
        # nothing below yields to the event loop
        if self.ownership.rebalancing:
            return
        for p in partitions:
            if self.detectors.stateful and self.detectors.due(p, self.settings.state_interval):
                body = self.detectors.save(p)
                key = b"%d" % p
                self.state.data[key] = body
                self.state.send_changelog(p, key, body, key_serializer="raw", value_serializer="raw")
                self.counters.saves += 1
            part = self.detectors.parts.get(p)
            if part is None:
                continue
            if not self.detectors.stateful or not part.dirty:
                for event in self._unacked.pop(p, []):
                    if stream is not None:
                        await stream.ack(event)
                    else:
                        event.ack()

    def assign(self, partitions: set[int], generation: int) -> None:
        """A new assignment: the state and pending events of partitions no longer held are dropped (the new
        owner restores the state from the changelog and processes the unacknowledged events again)."""
        keep = partitions - self.ownership.assign(partitions, generation)
        self.detectors.drop(keep)
        for p in [p for p in self._unacked if p not in keep]:
            del self._unacked[p]

    def _events_partitions(self, tps: Iterable[Any]) -> set[int]:
        """The events-topic partitions among ``tps`` (an assignment of every topic)."""
        events = self.settings.topic("events")
        return {tp.partition for tp in tps if tp.topic == events}

    async def act_batch(self, values: Sequence[Any]) -> int:
        source = f"kafka:{self.settings.topic('intents')}"
        actions, letters = await self.act.run([(source, _bytes(v)) for v in values])
        self.counters.intents += len(values)
        self.counters.actions += len(actions)
        await self.send(letters)
        return len(actions)

    async def _submit(self, proposals: list[Any]) -> list[Any]:
        if self.hooks.submit is None:
            return []
        return await self.hooks.submit(proposals)

    def _load(self, partition: int) -> bytes | None:
        value = self.state.data.get(b"%d" % partition)
        return bytes(value) if value is not None else None

    async def send(self, out: Sequence[Out]) -> None:
        """Produce ``out`` (through the hook when one replaces the producer).

        Straight into the producer's batches rather than through ``Topic.send_soon``: faust's send buffer
        publishes one message at a time, several event-loop turns each, and capped the worker. Nothing is
        lost by it: faust flushes the producer (its buffer and aiokafka's batches) before it commits the
        offsets these messages came from, and the events are acknowledged only after this returns."""
        sent = self.counters.sent
        for message in out:
            sent[message.topic] = sent.get(message.topic, 0) + 1
            if message.topic == "deadletter":
                self.counters.dead_letters += 1
        if not out:
            return
        if self.hooks.send is not None:
            for message in out:
                await self.hooks.send(self.settings.topic(message.topic), message)
            return
        producer = await self.app.maybe_start_producer()
        names = self._names
        for message in out:
            pending = await producer.send(names[message.topic], message.key, message.value, None, None, None)
            pending.add_done_callback(self._delivered)
        await asyncio.sleep(0)

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.counters.failed += 1
            log.error("a message could not be produced: %s", fut.exception())


class CachedPartitioner:
    """aiokafka's default partitioner (murmur2 of the key, as Java clients do) with the hashes of recent
    keys cached: aiokafka's murmur2 is pure Python (~60 µs a message), and the keys repeat (resource ids,
    dedup keys, targets). The partition a key maps to is unchanged."""

    def __init__(self, size: int = 65_536) -> None:
        self._hash = functools.lru_cache(maxsize=size)(murmur2)
        self._default = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(self._default(key, all_partitions, available))
        return all_partitions[(int(self._hash(key)) & 0x7FFFFFFF) % len(all_partitions)]


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


def _finding(value: Any) -> Finding:
    return msgspec.json.decode(_bytes(value), type=Finding)

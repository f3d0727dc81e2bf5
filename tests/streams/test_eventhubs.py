"""The Event Hubs source with the real SDK consumer client (only its AMQP link replaced by recorded bodies,
tests/streams/recorded_hub.py), the real ``BlobCheckpointStore`` against Azurite and the real store.

Acceptance: a consumer killed after the store accepted a batch but before its checkpoint, restarted on the
same checkpoint container, loses nothing and skips nothing, and the replay is absorbed by event ids; a
partition without a checkpoint starts at the configured position, one with a checkpoint resumes after it;
the watchdog restarts a consumer whose partition went silent and leaves a quiet but live one alone; two
instances on one checkpoint container split the partitions.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.eventhub.aio._eventprocessor.in_memory_checkpoint_store import InMemoryCheckpointStore
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from tests.azurite import Azurite, azurite  # noqa: F401 - the fixture
from tests.conftest import EVENT_FIXTURES
from tests.streams.recorded_hub import NAMESPACE, RecordedHub, RecordedHubClient
from vigil.events.batch import BatchNormalizer
from vigil.store.sqlite import Store
from vigil.streams.eventhubs import BatchIngest, HubSpec, HubStats, parse_starting_position
from vigil.streams.eventhubs_consumer import ConsumerTuning, HubConsumer, open_checkpoint_store

HUB = "insights-activity-logs"
FAST = ConsumerTuning(
    max_batch_size=2,
    max_wait_time=0.1,
    stall_after=0.6,
    watchdog_interval=0.05,
    restart_delay=0.05,
    load_balancing_interval=0.1,
    ownership_expiration=2.0,
)
_TEMPLATE = json.loads((EVENT_FIXTURES / "activity" / "good_envelope_keyvault_policy.json").read_bytes())


def activity_body(n: int, records: int = 2) -> bytes:
    """A recorded diagnostic-settings body of ``records`` Activity Log records, distinct for each ``n``."""
    out = []
    for i in range(records):
        rec = copy.deepcopy(_TEMPLATE["records"][i % len(_TEMPLATE["records"])])
        rec["correlationId"] = f"6b1f0c2e-3a4d-4f59-8e71-{n:06d}{i:06d}"
        out.append(rec)
    return json.dumps({"records": out}).encode()


def recorded_bodies() -> dict[str, list[bytes]]:
    """Two partitions: Activity Log bodies, the recorded Key Vault and Sentinel export bodies, one bad body."""
    keyvault = (EVENT_FIXTURES / "keyvault" / "good_event_hub_bodies.jsonl").read_bytes().splitlines()
    sentinel = (EVENT_FIXTURES / "sentinel" / "good_security_alert_export.json").read_bytes()
    p0 = [activity_body(n) for n in range(5)] + [keyvault[0]]
    p1 = [activity_body(n) for n in range(100, 103)] + [b'{"records": [ {"time": '] + [sentinel, keyvault[1]]
    return {"0": p0, "1": [*p1, activity_body(200)]}


def expected(bodies: dict[str, list[bytes]]) -> tuple[set[str], int]:
    """The event ids and the number of dead letters the bodies must produce, normalised offline."""
    normalizer = BatchNormalizer()
    ids: set[str] = set()
    dead = 0
    for pid, items in bodies.items():
        for seq, body in enumerate(items):
            result = normalizer.body(body, f"{pid}@{seq}")
            ids.update(e.id for e in result.events)
            dead += len(result.dead)
    return ids, dead


def memory_checkpoints() -> Any:
    """The SDK's in-memory checkpoint store (for tests that need no Azurite)."""
    return InMemoryCheckpointStore()  # type: ignore[no-untyped-call]


def stored_ids(store: Store) -> list[str]:
    return [s.event.id for s in store.read_events(0, 100_000)]


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def consumer(
    hub: RecordedHub,
    store: Store,
    checkpoints: Any,
    *,
    container: ContainerClient | None = None,
    starting_position: str = "-1",
    tuning: ConsumerTuning = FAST,
    factory: Callable[[], RecordedHubClient] | None = None,
) -> HubConsumer:
    spec = HubSpec("activity", NAMESPACE, hub.name, starting_position=starting_position)
    ingest = BatchIngest(spec, store, HubStats())

    def make() -> RecordedHubClient:
        return RecordedHubClient(
            hub,
            checkpoints,
            load_balancing_interval=tuning.load_balancing_interval,
            partition_ownership_expiration_interval=tuning.ownership_expiration,
        )

    return HubConsumer(ingest, factory or make, checkpoints, tuning, container=container)


async def run_until(c: HubConsumer, check: Callable[[], bool], what: str) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(c.run(stopping))
    try:
        await wait_for(check, what)
    finally:
        stopping.set()
        await asyncio.wait_for(task, 20)


class GatedCheckpoints(BlobCheckpointStore):
    """The real Blob checkpoint store, except that its ``gate``-th checkpoint write waits forever: the test
    kills the consumer there, after the store commit and before the checkpoint (or, with ``after``, just
    after the checkpoint was written)."""

    def __init__(self, *args: Any, gate: int, after: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.after = after
        self.calls = 0
        #: writes that returned to the consumer (the gated one never does)
        self.returned = 0
        self.reached = asyncio.Event()

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        self.calls += 1
        n = self.calls  # (other partitions' calls go on while this one awaits)
        if n == self.gate and not self.after:
            self.reached.set()
            await asyncio.Event().wait()
        await super().update_checkpoint(checkpoint, **kwargs)
        if n == self.gate:
            self.reached.set()
            await asyncio.Event().wait()
        self.returned += 1


class WatchedStore(Store):
    """The real store, counting the batch commits still running in worker threads. Cancelling the consumer
    (the test's kill) cannot stop a commit already handed to its thread; a real kill could land either side
    of it, so the test waits for those before it reads what the first consumer left."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.running = 0
        self._running_lock = threading.Lock()

    def accept(self, *args: Any, **kwargs: Any) -> Any:
        with self._running_lock:
            self.running += 1
        try:
            return super().accept(*args, **kwargs)
        finally:
            with self._running_lock:
                self.running -= 1


# -- the acceptance test: kill, restart, nothing lost, nothing skipped ------------------------------------


@pytest.mark.parametrize("after", [False, True], ids=["before-checkpoint", "after-checkpoint"])
def test_kill_and_restart_loses_and_skips_nothing(azurite: Azurite, tmp_path: Path, after: bool) -> None:  # noqa: F811
    bodies = recorded_bodies()
    want, want_dead = expected(bodies)
    hub = RecordedHub.of(HUB, bodies)
    container = azurite.container_name()
    store = WatchedStore(tmp_path / "vigil.db")

    async def scenario() -> tuple[HubStats, HubStats, dict[str, int], set[str]]:
        conn = azurite.connection_string
        gated = GatedCheckpoints.from_connection_string(conn, container, gate=3, after=after)
        assert isinstance(gated, GatedCheckpoints)
        async with ContainerClient.from_connection_string(conn, container) as cc:
            first = consumer(hub, store, gated, container=cc)
            assert await first.prepare() == {}  # container created, no checkpoint yet
            stopping = asyncio.Event()
            task = asyncio.create_task(first.run(stopping))
            await asyncio.wait_for(gated.reached.wait(), 20)
            task.cancel()  # the kill: the gated batch is committed, its checkpoint is not (or just is)
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(1000):  # a commit already in its thread finishes (see WatchedStore)
                if not store.running:
                    break
                await asyncio.sleep(0.01)
            assert not store.running
            committed = set(stored_ids(store))
            assert committed and committed < want  # some batches are in the store, not all

            plain = BlobCheckpointStore.from_connection_string(conn, container)
            before = {
                c["partition_id"]: c["sequence_number"]
                for c in await plain.list_checkpoints(NAMESPACE, HUB, "$Default")
            }
            second = consumer(hub, store, plain, container=cc)
            await second.prepare()
            done = {pid: len(items) - 1 for pid, items in bodies.items()}
            await run_until(second, lambda: second.stats.checkpointed == done, "all partitions checkpointed")
            after_cp = {
                c["partition_id"]: c["sequence_number"]
                for c in await plain.list_checkpoints(NAMESPACE, HUB, "$Default")
            }
            assert after_cp == done
            await plain.close()
            await gated.close()
            # The consumer counted only writes that returned to it: never the gated one. (Other
            # partitions' writes may return between the gate and the kill, so no fixed number holds.)
            assert first.stats.checkpoints <= gated.returned <= gated.calls - 1
            return first.stats, second.stats, before, committed

    try:
        first, second, before, committed = asyncio.run(scenario())
        ids = stored_ids(store)
        assert len(ids) == len(set(ids)) == len(want)  # every record once
        assert set(ids) == want  # nothing lost, nothing skipped
        assert len(store.dead_letters()) == want_dead == 1  # the bad body, once despite any replay
        # the restart started from the checkpoints the first consumer left, not from the beginning
        assert set(before) <= {"0", "1"} and before
        # the replayed records came back and the store absorbed them by event id: the second consumer
        # stored exactly what the first left out (the first counted only the commits that returned to it)
        assert first.events <= len(committed)
        assert len(committed) + second.events == len(want)
        if not after:
            assert second.duplicates > 0
    finally:
        store.close()


def test_starting_position_applies_only_without_a_checkpoint(azurite: Azurite, tmp_path: Path) -> None:  # noqa: F811
    """Partition 0 has a checkpoint at sequence 1: it resumes after it. Partition 1 has none: it starts
    after the configured sequence number 2, so its events 0..2 are not read."""
    bodies = {"0": [activity_body(n) for n in range(4)], "1": [activity_body(n) for n in range(10, 15)]}
    hub = RecordedHub.of(HUB, bodies)
    store = Store(tmp_path / "vigil.db")
    container = azurite.container_name()

    async def scenario() -> HubStats:
        checkpoints, cc = open_checkpoint_store(container, connection_string=azurite.connection_string)
        async with cc:
            c = consumer(hub, store, checkpoints, container=cc, starting_position="2")
            await cc.create_container()
            await checkpoints.update_checkpoint(
                {
                    "fully_qualified_namespace": NAMESPACE,
                    "eventhub_name": HUB,
                    "consumer_group": "$Default",
                    "partition_id": "0",
                    "offset": str(1 * 1000),
                    "sequence_number": 1,
                }
            )
            assert set(await c.prepare()) == {"0"}  # the existing container is fine
            await run_until(c, lambda: c.stats.checkpointed == {"0": 3, "1": 4}, "both partitions caught up")
            await checkpoints.close()
            return c.stats

    try:
        stats = asyncio.run(scenario())
        want = {e for b in bodies["0"][2:] + bodies["1"][3:] for e in _ids(b)}
        assert set(stored_ids(store)) == want
        assert stats.events == len(want) and stats.duplicates == 0
    finally:
        store.close()


def _ids(body: bytes) -> set[str]:
    return {e.id for e in BatchNormalizer().body(body, "x").events}


def test_default_start_reads_every_retained_event(tmp_path: Path) -> None:
    """No checkpoint and the default position: the whole retention window, not "@latest" (SDK default)."""
    bodies = {"0": [activity_body(n) for n in range(3)]}
    hub = RecordedHub.of(HUB, bodies)
    store = Store(tmp_path / "vigil.db")
    try:
        c = consumer(hub, store, memory_checkpoints())
        assert c.starting_position == "-1"
        asyncio.run(run_until(c, lambda: c.stats.checkpointed == {"0": 2}, "partition 0 read"))
        assert set(stored_ids(store)) == {e for b in bodies["0"] for e in _ids(b)}
    finally:
        store.close()


def test_parse_starting_position() -> None:
    assert parse_starting_position("-1") == parse_starting_position("earliest") == "-1"
    assert parse_starting_position("@latest") == "@latest"
    assert parse_starting_position("42") == 42
    assert parse_starting_position("2026-11-24T09:00:00Z").isoformat() == "2026-11-24T09:00:00+00:00"  # type: ignore[union-attr]
    for bad in ("yesterday", "2026-11-24T09:00:00"):
        with pytest.raises(ValueError, match="starting position"):
            parse_starting_position(bad)


# -- the watchdog -----------------------------------------------------------------------------------------


def test_watchdog_restarts_a_stalled_consumer(tmp_path: Path) -> None:
    """Partition 1's link hangs (no events, no empty callbacks): the watchdog logs and counts it, closes the
    client and starts a new one, which reads partition 1 from its checkpoint."""
    bodies = {"0": [activity_body(n) for n in range(2)], "1": [activity_body(n) for n in range(50, 53)]}
    hub = RecordedHub.of(HUB, bodies)
    hub.partitions["1"].stalled = True
    store = Store(tmp_path / "vigil.db")
    checkpoints = memory_checkpoints()
    clients: list[RecordedHubClient] = []

    def make() -> RecordedHubClient:
        if clients:  # the restarted consumer gets a healthy link
            hub.partitions["1"].stalled = False
        client = RecordedHubClient(hub, checkpoints, load_balancing_interval=0.1)
        clients.append(client)
        return client

    try:
        c = consumer(hub, store, checkpoints, factory=make)
        asyncio.run(
            run_until(c, lambda: c.stats.checkpointed == {"0": 1, "1": 2}, "partition 1 after restart")
        )
        assert c.stats.stalls >= 1 and c.stats.restarts >= 1
        assert len(clients) >= 2
        assert set(stored_ids(store)) == {e for p in bodies.values() for b in p for e in _ids(b)}
    finally:
        store.close()


def test_watchdog_leaves_a_quiet_live_partition_alone(tmp_path: Path) -> None:
    """No events for several stall periods, but empty-wait callbacks keep coming: no stall, no restart."""
    hub = RecordedHub.of(HUB, {"0": [], "1": []})
    store = Store(tmp_path / "vigil.db")
    try:
        c = consumer(hub, store, memory_checkpoints())

        async def quiet() -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + 4 * FAST.stall_after
            await run_until(c, lambda: loop.time() > end, "time to pass")

        asyncio.run(quiet())
        assert c.stats.empty_waits > 10
        assert c.stats.stalls == 0 and c.stats.restarts == 0
    finally:
        store.close()


def test_tuning_refuses_a_watchdog_that_would_fire_on_quiet_partitions() -> None:
    with pytest.raises(ValueError, match="twice max_wait_time"):
        ConsumerTuning(max_wait_time=10, stall_after=15)


# -- load balancing ---------------------------------------------------------------------------------------


def test_two_instances_split_the_partitions(azurite: Azurite, tmp_path: Path) -> None:  # noqa: F811
    """Two daemons with the same consumer group and checkpoint container: each ends up owning one of the
    two partitions, and together they store every record once."""
    bodies = {"0": [activity_body(n) for n in range(3)], "1": [activity_body(n) for n in range(30, 33)]}
    hub = RecordedHub.of(HUB, bodies)
    store = Store(tmp_path / "vigil.db")
    container = azurite.container_name()

    async def scenario() -> tuple[list[str], list[str]]:
        conn = azurite.connection_string
        async with ContainerClient.from_connection_string(conn, container) as cc:
            stores = [BlobCheckpointStore.from_connection_string(conn, container) for _ in range(2)]
            a, b = (consumer(hub, store, s, container=cc) for s in stores)
            await a.prepare()
            stopping = asyncio.Event()
            tasks = [asyncio.create_task(x.run(stopping)) for x in (a, b)]

            def split() -> bool:
                owned_a, owned_b = a.activity.owned(), b.activity.owned()
                return len(owned_a) == len(owned_b) == 1 and set(owned_a) != set(owned_b)

            try:
                await wait_for(split, "the partitions split between the two instances")
                result = (a.activity.owned(), b.activity.owned())
                await wait_for(lambda: len(stored_ids(store)) == 12, "every record stored")
            finally:
                stopping.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 20)
                for s in stores:
                    await s.close()
            return result

    try:
        owned_a, owned_b = asyncio.run(scenario())
        assert sorted(owned_a + owned_b) == ["0", "1"]
        ids = stored_ids(store)
        assert len(ids) == len(set(ids)) == 12
    finally:
        store.close()


# -- a checkpoint store outage (reliability A7) ------------------------------------------------------------


class FailingCheckpoints(InMemoryCheckpointStore):  # type: ignore[misc]
    """The SDK's in-memory checkpoint store whose checkpoint writes fail while ``down`` (as the Blob store's
    do while its account is unreachable); ownership claims keep working."""

    down = False

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        if self.down:
            raise ConnectionError("checkpoint store unreachable (test)")
        await super().update_checkpoint(checkpoint, **kwargs)


def test_a_checkpoint_outage_is_an_alarm_and_clears_when_checkpoints_are_written(tmp_path: Path) -> None:
    """While checkpoints fail, events are still stored (nothing waits on the checkpoint), each failure is
    counted, and the hub reports an alarm with how long it has lasted (shown by /readyz and /v1/status) and
    a failing-seconds gauge; the first checkpoint written afterwards clears both and covers the outage."""
    hub = RecordedHub.of(HUB, {"0": [activity_body(0)]})
    store = Store(tmp_path / "vigil.db")
    checkpoints = FailingCheckpoints()
    try:
        c = consumer(hub, store, checkpoints)
        stats = c.ingest.stats

        async def main() -> None:
            stopping = asyncio.Event()
            task = asyncio.create_task(c.run(stopping))
            try:
                await wait_for(lambda: stats.checkpointed == {"0": 0}, "the first checkpoint")
                assert stats.alarm(HUB) is None and stats.checkpoint_failing_for() == 0
                checkpoints.down = True
                for n in range(1, 4):
                    hub.partitions["0"].append(activity_body(n))
                await wait_for(
                    lambda: stats.checkpoint_failures >= 1 and stats.events == 8, "stored, unchecked"
                )
                await asyncio.sleep(0.3)
                alarm = stats.alarm(HUB)
                assert alarm is not None and "checkpoints failing for" in alarm
                assert "ConnectionError: checkpoint store unreachable" in alarm
                assert stats.checkpoint_failing_for() >= 0.3 and stats.checkpointed == {"0": 0}
                checkpoints.down = False
                hub.partitions["0"].append(activity_body(9))
                await wait_for(lambda: stats.checkpointed == {"0": 4}, "a checkpoint after the outage")
                assert stats.alarm(HUB) is None and stats.checkpoint_failing_for() == 0
            finally:
                stopping.set()
                await asyncio.wait_for(task, 20)

        asyncio.run(main())
        assert len(set(stored_ids(store))) == 10  # every record of the five bodies, once
    finally:
        store.close()

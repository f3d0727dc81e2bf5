"""Event Hubs source, the consumer: the SDK client, its Blob checkpoint store, and a watchdog.

:class:`HubConsumer` runs ``EventHubConsumerClient.receive_batch`` (azure-eventhub's async client) with a
``BlobCheckpointStore`` (reference/azure.md §5.5) and hands every batch to
:class:`~vigil.streams.eventhubs.BatchIngest`, which checkpoints only after the store commit.

**Load balancing.** Every daemon instance that consumes the same hub with the same consumer group and the
same checkpoint container splits the partitions with the others: the SDK claims ownership through blobs
with ETag concurrency and, with a checkpoint store, opens epoch receivers (``owner_level=0``), so a new
owner disconnects the old one. Delivery is at-least-once; a partition that moves is replayed from its last
checkpoint and the store's event ids absorb the replay.

**Startup.** The checkpoint container is created if it is missing (the SDK's store does not create it),
and the partitions that have no checkpoint are logged with the position they will start from
(:attr:`HubSpec.starting_position <vigil.streams.eventhubs.HubSpec.starting_position>`, ``"-1"`` = the
oldest retained event unless configured otherwise).

**Watchdog.** The async client has been seen to stop receiving without an error or a disconnect
(Azure/azure-sdk-for-python#42332, #9917). The client is asked for a callback every ``max_wait_time``
seconds even when a partition is quiet (an empty batch), so silence means a dead receiver: when an owned
partition has had no callback, with or without events, for ``stall_after`` seconds (and is not busy
committing a batch), the watchdog logs it, counts it in :attr:`HubStats.stalls`, closes the client and
starts a new one, which resumes from the checkpoints. A client whose ``receive_batch`` ends or raises while
the source is not stopping is restarted the same way after ``restart_delay`` seconds (doubling up to
:data:`MAX_RESTART_DELAY`), and counted in :attr:`HubStats.restarts`.

The client is made by a factory (:func:`client_factory` in production), so tests run the real SDK event
processor, ownership manager and checkpoint store against Azurite with a client whose only fake part is
the AMQP link, fed recorded event bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from azure.core.exceptions import ResourceExistsError
from azure.eventhub import CloseReason, EventData
from azure.eventhub.aio import CheckpointStore, EventHubConsumerClient, PartitionContext
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from vigil.streams.eventhubs import BatchIngest, HubSpec, parse_starting_position

log = logging.getLogger(__name__)

#: longest pause before a failed client is started again
MAX_RESTART_DELAY: Final = 60.0
#: how long closing a client may take before its task is cancelled outright
CLOSE_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class ConsumerTuning:
    """How the consumer receives and when the watchdog acts (seconds unless said otherwise)."""

    max_batch_size: int = 300
    #: an empty callback after this long without events: the liveness signal the watchdog reads
    max_wait_time: float = 10.0
    #: an owned partition silent this long (no batch, no empty callback) is a stalled receiver
    stall_after: float = 120.0
    #: how often the watchdog looks
    watchdog_interval: float = 5.0
    restart_delay: float = 1.0
    prefetch: int = 300
    #: the SDK's ownership claim cycle; an ownership not renewed in 6 x this is taken over
    load_balancing_interval: float = 30.0
    #: None: the SDK default of 6 x ``load_balancing_interval``
    ownership_expiration: float | None = None

    def __post_init__(self) -> None:
        if self.max_wait_time <= 0:
            raise ValueError("max_wait_time must be > 0: the watchdog relies on empty callbacks")
        if self.stall_after < 2 * self.max_wait_time:
            raise ValueError(
                f"stall_after ({self.stall_after} s) must be at least twice max_wait_time "
                f"({self.max_wait_time} s), or quiet partitions look stalled"
            )


#: makes a fresh client (the SDK's, or in tests a subclass whose AMQP link is replaced)
ClientFactory = Callable[[], EventHubConsumerClient]


def client_factory(
    spec: HubSpec, credential: Any, checkpoint_store: CheckpointStore, tuning: ConsumerTuning, **kwargs: Any
) -> ClientFactory:
    """Clients for ``spec`` that share ``checkpoint_store`` (``credential``: an azure-identity async
    credential; ``kwargs`` go to the client, e.g. ``transport_type`` or ``retry_total``)."""

    def make() -> EventHubConsumerClient:
        return EventHubConsumerClient(
            spec.namespace,
            spec.eventhub,
            spec.consumer_group,
            credential,
            checkpoint_store=checkpoint_store,
            load_balancing_interval=tuning.load_balancing_interval,
            partition_ownership_expiration_interval=tuning.ownership_expiration,
            **kwargs,
        )

    return make


async def ensure_container(container: ContainerClient) -> bool:
    """Create the checkpoint container if it does not exist; True if it was created."""
    try:
        await container.create_container()
    except ResourceExistsError:
        return False
    return True


def open_checkpoint_store(
    container: str,
    *,
    account_url: str | None = None,
    credential: Any = None,
    connection_string: str | None = None,
) -> tuple[BlobCheckpointStore, ContainerClient]:
    """The Blob checkpoint store for ``container`` and a client for the container itself (to create it):
    from ``account_url`` (``https://<account>.blob.core.windows.net``) and an azure-identity async
    ``credential`` (the identity needs *Storage Blob Data Contributor* on the container), or from a
    ``connection_string`` (Azurite; a secret: read it from the environment, never from a profile)."""
    if connection_string is not None:
        store = BlobCheckpointStore.from_connection_string(connection_string, container)
        return store, ContainerClient.from_connection_string(connection_string, container)
    if account_url is None:
        raise ValueError("a checkpoint store needs account_url (with a credential) or connection_string")
    store = BlobCheckpointStore(account_url, container, credential=credential)
    return store, ContainerClient(account_url, container, credential=credential)


class HubConsumer:
    """Receives one hub through a client from ``factory`` until :meth:`run`'s ``stopping`` is set."""

    def __init__(
        self,
        ingest: BatchIngest,
        factory: ClientFactory,
        checkpoint_store: CheckpointStore,
        tuning: ConsumerTuning | None = None,
        *,
        container: ContainerClient | None = None,
    ) -> None:
        self.ingest = ingest
        self.spec: HubSpec = ingest.spec
        self.stats = ingest.stats
        self.activity = ingest.activity
        self.tuning = tuning if tuning is not None else ConsumerTuning()
        self.starting_position = parse_starting_position(self.spec.starting_position)
        self._factory = factory
        self._store = checkpoint_store
        self._container = container

    async def prepare(self) -> dict[str, dict[str, Any]]:
        """Create the checkpoint container when one was given, and log where each partition resumes; the
        checkpoints found (partition id -> checkpoint)."""
        spec = self.spec
        if self._container is not None and await ensure_container(self._container):
            log.info("%s: created checkpoint container %s", spec.name, self._container.container_name)
        found = await self._store.list_checkpoints(spec.namespace, spec.eventhub, spec.consumer_group)
        checkpoints = {str(c["partition_id"]): dict(c) for c in found}
        for pid, cp in sorted(checkpoints.items()):
            log.info(
                "%s: partition %s resumes after sequence number %s", spec.name, pid, cp.get("sequence_number")
            )
        log.info(
            "%s: %s/%s (consumer group %s): partitions without a checkpoint start at %r",
            spec.name,
            spec.namespace,
            spec.eventhub,
            spec.consumer_group,
            spec.starting_position,
        )
        return checkpoints

    async def run(self, stopping: asyncio.Event) -> None:
        """Receive until ``stopping`` is set, restarting the client when the watchdog finds it stalled or
        when it fails; never raises for client problems, only logs and counts them."""
        stats = self.stats
        stats.running = True
        delay = self.tuning.restart_delay
        try:
            while not stopping.is_set():
                batches = stats.batches
                reason = await self._supervise(self._factory(), stopping)
                if reason is None:
                    break
                stats.restarts += 1
                stats.last_error = reason
                if stats.batches > batches:  # it worked for a while: not a start-up failure loop
                    delay = self.tuning.restart_delay
                log.warning("%s: restarting the consumer in %.1f s: %s", self.spec.name, delay, reason)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=delay)
                delay = min(delay * 2, MAX_RESTART_DELAY)
        finally:
            stats.running = False

    async def _supervise(self, client: EventHubConsumerClient, stopping: asyncio.Event) -> str | None:
        """Run one client; None when ``stopping`` was set, else why it must be restarted."""
        tuning = self.tuning
        self.activity.reset()
        receiving = asyncio.create_task(
            client.receive_batch(
                self._on_batch,
                max_batch_size=tuning.max_batch_size,
                max_wait_time=tuning.max_wait_time,
                prefetch=tuning.prefetch,
                starting_position=self.starting_position,
                on_error=self._on_error,
                on_partition_initialize=self._on_initialize,
                on_partition_close=self._on_close,
            ),
            name=f"vigil.eventhubs.{self.spec.name}",
        )
        reason: str | None = None
        try:
            while reason is None and not stopping.is_set():
                stop_wait = asyncio.create_task(stopping.wait())
                done, _ = await asyncio.wait(
                    {receiving, stop_wait},
                    timeout=tuning.watchdog_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                stop_wait.cancel()
                if receiving in done:
                    exc = None if receiving.cancelled() else receiving.exception()
                    reason = "client stopped receiving" + (f": {type(exc).__name__}: {exc}" if exc else "")
                elif not stopping.is_set():
                    reason = self._check_stalls()
        finally:
            await self._close(client, receiving)
        return reason

    def _check_stalls(self) -> str | None:
        silent = self.activity.silent(self.tuning.stall_after)
        if not silent:
            return None
        self.stats.stalls += 1
        worst = ", ".join(f"{p} ({s:.0f} s)" for p, s in sorted(silent.items()))
        log.error(
            "%s: watchdog: no batch and no empty-wait callback from partition(s) %s for more than %.0f s; "
            "the receiver looks stalled",
            self.spec.name,
            worst,
            self.tuning.stall_after,
        )
        return f"watchdog: partition(s) {worst} stalled"

    async def _close(self, client: EventHubConsumerClient, receiving: asyncio.Task[None]) -> None:
        """Close the client (it stops its partitions and releases their ownership), then make sure the
        receive task is gone even if closing hung on a dead link."""
        try:
            await asyncio.wait_for(client.close(), timeout=CLOSE_TIMEOUT)
        except Exception as exc:  # TimeoutError or a transport error while closing: cancel below
            log.warning("%s: closing the client failed: %s: %s", self.spec.name, type(exc).__name__, exc)
        if not receiving.done():
            receiving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receiving
        self.activity.reset()

    # -- SDK callbacks ------------------------------------------------------------------------------------

    async def _on_batch(self, ctx: PartitionContext, events: list[EventData]) -> None:
        await self.ingest.handle(ctx, events)

    async def _on_initialize(self, ctx: PartitionContext) -> None:
        self.activity.opened(ctx.partition_id)
        log.info("%s: receiving partition %s", self.spec.name, ctx.partition_id)

    async def _on_close(self, ctx: PartitionContext, reason: CloseReason) -> None:
        self.activity.closed(ctx.partition_id)
        log.info("%s: partition %s closed (%s)", self.spec.name, ctx.partition_id, reason.name)

    async def _on_error(self, ctx: PartitionContext | None, error: Exception) -> None:
        where = f"partition {ctx.partition_id}" if ctx is not None else "load balancing"
        self.stats.last_error = f"{where}: {type(error).__name__}: {error}"
        log.warning("%s: %s: %s: %s", self.spec.name, where, type(error).__name__, error)


__all__ = [
    "ClientFactory",
    "ConsumerTuning",
    "HubConsumer",
    "client_factory",
    "ensure_container",
    "open_checkpoint_store",
]

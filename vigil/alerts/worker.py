"""Delivery: one worker per sink, sending the outbox's rows with retries, backoff and rate limits.

Why one worker per sink: a slow or dead sink must block nothing else (reliability D4). Each
:class:`SinkWorker` is one asyncio task sending one request at a time to its own sink, so Teams timing out
for ten minutes holds Teams' rows and nothing else; and the number of connections is bounded by the number
of sinks (the falcosidekick#963 pattern, one goroutine per event and output, is what this avoids).

What a worker sends comes from two places: a bounded in-memory queue of outbox ids (:meth:`notify`, so a
new alert goes out at once) and a scan of :meth:`Outbox.due` every second (retries whose time came, rows
recovered after a crash, and rows whose notification did not fit in a full queue: a full queue loses
nothing, the row is in the outbox). The outbox is the truth; the queue is only a hint.

One attempt, for one row:

1. past the **retry horizon** (``horizon`` seconds since the row was created) → dead letter
   ``retry horizon passed: <last error>``, counted in ``expired`` and ``dead`` (the alarm metric);
2. wait for the sink's **rate limits** (``per_second``, ``per_hour``): wait, never drop (falco#1333);
3. claim it (``pending → sending``), ``delivery = await sink.send(client, alert)`` (one attempt), then
   ``sent`` → :meth:`Outbox.mark_sent`; ``dead`` (a 400) → dead letter at once, no retry; ``retry`` →
   due again at ``now + max(retry_after, backoff)``, where backoff is full jitter,
   ``uniform(0, min(backoff_max, backoff_base * 2 ** failures_before))``.

A ``retry`` also **holds the whole sink** until that time: a 429 or 5xx or a refused connection says the
sink (not this alert) is unwell, and ``Retry-After`` is the server's word for the sink. Sending the next
row at once would only spend the rate limit and earn another 429. After the hold, the oldest row goes first.

Rate limits are sliding windows (at most ``n`` sends in any ``period``), not token buckets: a bucket of
100 per hour that starts full lets 200 through in the first hour, which is above Teams' published 100/h.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol, TypedDict

import httpx

from vigil.alerts.model import Delivery, Sink
from vigil.alerts.outbox import Outbox, OutboxEntry, OutboxState
from vigil.alerts.redact import redact_text
from vigil.streams.crash import crash_point

log = logging.getLogger(__name__)

#: seconds between two scans of the outbox for due rows
SCAN_INTERVAL: Final = 1.0
#: rows read per scan (a full batch is followed by another scan at once)
SCAN_BATCH: Final = 100

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Random(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


class RateLimit:
    """At most ``limit`` sends in any ``period`` seconds (a sliding window of the last sends' times)."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = max(1, limit)
        self.period = period
        self._sent: deque[float] = deque()

    @classmethod
    def of(cls, rate: float | None, period: float) -> RateLimit | None:
        """``rate`` sends per ``period`` (4/s, 100/h, 0.5/s: one every 2 s); None for no limit."""
        if rate is None or rate <= 0 or math.isinf(rate):
            return None
        if rate >= 1:
            whole = math.floor(rate)
            return cls(whole, period * whole / rate)
        return cls(1, period / rate)

    def wait(self, now: float) -> float:
        """Seconds until one more send stays within the limit (0: now)."""
        while self._sent and self._sent[0] <= now - self.period:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return 0.0
        return self._sent[0] + self.period - now

    def record(self, now: float) -> None:
        self._sent.append(now)


@dataclass(slots=True)
class WorkerCounters:
    """What one worker did since it started (the outbox has the durable counts)."""

    sent: int = 0
    retried: int = 0
    #: dead letters of any reason (a 400, a sink bug, the horizon): the alarm metric
    dead: int = 0
    #: of which the retry horizon passed
    expired: int = 0
    attempts: int = 0
    in_flight: int = 0
    #: notifications that did not fit in the queue (the scan picks their rows up: not a loss)
    queue_overflow: int = 0
    #: low and informational triggers not stored for this sink: its outbox already held ``max_waiting``
    shed: int = 0


class WorkerOptions(TypedDict, total=False):
    """:class:`SinkWorker`'s keyword arguments, which :class:`~vigil.alerts.dispatcher.AlertDispatcher`
    passes through to each of its workers (so each option and its default are written once, here)."""

    backoff_base: float
    backoff_max: float
    horizon: float
    queue_size: int
    clock: Clock
    monotonic: Clock | None
    sleep: Sleep
    rng: Random


class SinkWorker:
    """Sends ``sink``'s outbox rows (see the module docstring); :meth:`run` until ``stop`` is set."""

    def __init__(
        self,
        outbox: Outbox,
        sink: Sink,
        client: httpx.AsyncClient,
        *,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        horizon: float = 86400.0,
        queue_size: int = 1000,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: Random = random,
        monotonic: Clock | None = None,
        on_dead: Callable[[OutboxEntry, str], None] | None = None,
    ) -> None:
        """``clock`` (wall seconds) times what the outbox stores (``next_at``, the retry horizon);
        ``monotonic`` the sink's rate limits, held only in memory, so that a wall-clock step back does not
        hold pages for as long as the step (reliability I2). None: :func:`time.monotonic`, or ``clock`` when
        one was injected (tests drive a single fake time)."""
        self.outbox = outbox
        self.sink = sink
        #: told of every dead letter (the dispatcher raises it on the other sinks, reliability D2)
        self.on_dead = on_dead
        self.name = sink.name
        self.client = client
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.horizon = horizon
        self.counters = WorkerCounters()
        self._queue: asyncio.Queue[int] = asyncio.Queue(maxsize=max(1, queue_size))
        self._wake = asyncio.Event()
        self._clock = clock
        self._mono = monotonic or (time.monotonic if clock is time.time else clock)
        self._sleep = sleep
        self._rng = rng
        limits = (RateLimit.of(sink.per_second, 1.0), RateLimit.of(sink.per_hour, 3600.0))
        self._limits = [limit for limit in limits if limit is not None]
        self._hold_until = 0.0
        self._next_scan = 0.0

    def __repr__(self) -> str:
        return f"SinkWorker({self.name!r})"

    def notify(self, entry_id: int) -> None:
        """A new row for this sink (call from the event loop). Never blocks: a full queue is counted and
        the row waits for the next scan."""
        try:
            self._queue.put_nowait(entry_id)
        except asyncio.QueueFull:
            self.counters.queue_overflow += 1
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        """Counters, the outbox's rows of this sink per state, and ``oldest_pending_age`` in seconds."""
        rows = self.outbox.stats(self.name).get(self.name, {})
        return self.summary(rows)

    def summary(self, rows: Mapping[str, Any]) -> dict[str, Any]:
        """Counters, ``rows`` (this sink's outbox rows per state, from :meth:`Outbox.stats`) and ages."""
        out: dict[str, Any] = asdict(self.counters)
        out["outbox"] = {s.value: int(rows.get(s.value, 0)) for s in OutboxState}
        oldest = rows.get("oldest_pending")
        out["oldest_pending_age"] = None if oldest is None else max(0.0, self._clock() - float(oldest))
        out["held_for"] = max(0.0, self._hold_until - self._clock())
        return out

    # -- the loop ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Send due rows until ``stop``. An attempt in flight finishes first (bounded by the client's
        timeout); cancelling the task abandons it, and the row, left ``sending``, is recovered at the next
        start (:meth:`Outbox.recover`)."""
        while not stop.is_set():
            now = self._clock()
            if now < self._hold_until:
                await self._idle(stop, self._hold_until)
                continue
            batch = self._drain()
            if now >= self._next_scan:
                due = self.outbox.due(self.name, now, SCAN_BATCH)
                self._next_scan = now if len(due) == SCAN_BATCH else now + SCAN_INTERVAL
                batch.update(entry.id for entry in due)
            for entry_id in sorted(batch):
                if stop.is_set() or self._clock() < self._hold_until:
                    break  # the rest stay pending in the outbox: the next scan finds them
                await self._attempt(entry_id, stop)
            if not batch:
                await self._idle(stop, self._next_scan)

    def _drain(self) -> set[int]:
        ids: set[int] = set()
        while not self._queue.empty():
            ids.add(self._queue.get_nowait())
        return ids

    async def _idle(self, stop: asyncio.Event, until: float) -> None:
        """Wait until ``until`` (by the injected clock), a notification, or ``stop``."""
        delay = until - self._clock()
        if delay <= 0 or self._wake.is_set():
            self._wake.clear()
            await asyncio.sleep(0)
            return
        await self._race(stop, delay, self._wake)
        self._wake.clear()

    async def _pause(self, stop: asyncio.Event, delay: float) -> None:
        """Wait ``delay`` seconds or until ``stop``; notifications do not end it."""
        await self._race(stop, delay, None)

    async def _race(self, stop: asyncio.Event, delay: float, wake: asyncio.Event | None) -> None:
        await pause(stop, delay, self._sleep, wake)

    # -- one attempt ---------------------------------------------------------------------------------------

    async def _attempt(self, entry_id: int, stop: asyncio.Event) -> None:
        entry = self.outbox.get(entry_id)
        if entry is None or entry.state is not OutboxState.PENDING or entry.next_at > self._clock():
            return  # sent already (a notification and a scan both named it), or not due yet
        if self._clock() - entry.created >= self.horizon:
            self._expire(entry, entry.last_error or "never attempted")
            return
        while (wait := max((limit.wait(self._mono()) for limit in self._limits), default=0.0)) > 0:
            await self._pause(stop, wait)
            if stop.is_set():
                return
        if not self.outbox.mark_sending(entry_id):
            return
        for limit in self._limits:
            limit.record(self._mono())
        self.counters.attempts += 1
        self.counters.in_flight += 1
        try:
            delivery = await self.sink.send(self.client, entry.alert)
        except Exception as exc:  # a sink bug must not stop the worker; the row is retried
            reason = f"sink error: {type(exc).__name__}: {redact_text(str(exc))}"
            log.warning("alerts: %s: %s", self.name, reason)
            delivery = Delivery("retry", reason=reason)
        finally:
            self.counters.in_flight -= 1
        crash_point("alerts.after_send")
        self._settle(entry, delivery)

    def _settle(self, entry: OutboxEntry, delivery: Delivery) -> None:
        if delivery.outcome == "sent":
            self.outbox.mark_sent(entry.id, delivery.status)
            self.counters.sent += 1
            return
        reason = delivery.reason or f"{delivery.outcome} (status {delivery.status})"
        if delivery.outcome == "dead":
            self._dead(entry, reason, delivery.status)
            return
        now = self._clock()
        if now - entry.created >= self.horizon:
            self._expire(entry, reason, delivery.status)
            return
        failures_before = entry.attempts  # the attempt that just failed is number attempts + 1
        cap = min(self.backoff_max, self.backoff_base * 2.0 ** min(failures_before, 62))
        delay = max(delivery.retry_after or 0.0, self._rng.uniform(0.0, cap))
        self.outbox.mark_retry(entry.id, now + delay, reason, delivery.status)
        self.counters.retried += 1
        self._hold_until = self._next_scan = now + delay  # scan again the moment the hold ends
        log.info("alerts: %s: retry %s in %.1fs: %s", self.name, entry.id, delay, redact_text(reason))

    def _dead(self, entry: OutboxEntry, reason: str, status: int | None) -> None:
        self.outbox.mark_dead(entry.id, reason, status)
        self.counters.dead += 1
        log.warning(
            "alerts: %s: dead letter %s (%s): %s", self.name, entry.id, entry.dedup_key, redact_text(reason)
        )
        if self.on_dead is not None:
            self.on_dead(entry, redact_text(reason))

    def _expire(self, entry: OutboxEntry, last_error: str, status: int | None = None) -> None:
        self.counters.expired += 1
        self._dead(
            entry, f"retry horizon passed: {last_error}", status if status is not None else entry.last_status
        )


async def pause(stop: asyncio.Event, delay: float, sleep: Sleep, wake: asyncio.Event | None = None) -> None:
    """Wait ``delay`` seconds (on ``sleep``'s clock), or until ``stop`` or ``wake`` is set."""
    waiters = [asyncio.ensure_future(sleep(delay)), asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

"""The door to the sink workers: :class:`AlertDispatcher` stores alerts in the outbox and wakes the workers.

One :class:`~vigil.alerts.worker.SinkWorker` per configured sink does the sending (``worker.py``); the
dispatcher is what the alert stage, the response engine and the incident API hand alerts to. A batch of
alerts (:meth:`AlertDispatcher.submit_many`, one alert stage step) is one outbox transaction, committed in
a worker thread, so the event loop neither pays a disk sync per alert nor waits for one.

**Shedding** (``max_waiting``, ``alerts.max_waiting``): the outbox is durable, so a sink that is down for
days would grow it without end. When a sink already holds ``max_waiting`` undelivered rows, a new *trigger*
of low or informational severity is not stored for that sink; it is counted in ``shed``
(``vigil_alerts_shed_total``) and logged. Medium and above, and every resolve, acknowledge and notice, are
always stored. The finding and its incident are in the store either way: only that sink's message is left
out.

**Dead letters are raised elsewhere** (reliability D2): an alert that a sink refuses for good (a 400, the
retry horizon passed) is counted and logged, and the dispatcher also sends a ``notice``
(``rule: vigil.alert-dead-letter``, severity high) to every *other* configured sink, saying which sink
dropped what and why, so a page that never reached PagerDuty is seen in Teams or Slack. At most one such
notice per failing sink every :data:`DEAD_NOTICE_EVERY` seconds (a storm of 400s is one notice, which
counts the others); a notice that is itself dead-lettered raises nothing further.

Retention: delivered rows are deleted after ``keep_sent`` seconds (``alerts.keep_sent``, 7 days), at start
and every :data:`PRUNE_EVERY` seconds; undelivered and dead rows are kept.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, Unpack

import httpx

from vigil.alerts.model import Alert, AlertKind, Sink, dedup_key
from vigil.alerts.outbox import Outbox, OutboxEntry
from vigil.alerts.redact import redact_text
from vigil.alerts.worker import SinkWorker, WorkerOptions, pause

log = logging.getLogger(__name__)
#: severities whose new triggers a sink with a full outbox sheds (reliability D4); higher ones always wait
SHEDDABLE: Final = frozenset({"informational", "low"})
#: seconds between two deletions of delivered rows past ``alerts.keep_sent`` (at most)
PRUNE_EVERY: Final = 600.0
#: delivered rows deleted per transaction
PRUNE_SLICE: Final = 5000
#: the rule of the notice that raises a dead letter on the other sinks
DEAD_RULE: Final = "vigil.alert-dead-letter"
#: seconds between two dead-letter notices about one sink (the ones in between are counted in the next)
DEAD_NOTICE_EVERY: Final = 60.0


class AlertDispatcher:
    """One :class:`SinkWorker` per configured sink, and the door to them: :meth:`submit` stores an alert for
    each named sink (durably, one transaction) and notifies their workers."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Mapping[str, Sink],
        client: httpx.AsyncClient,
        *,
        max_waiting: int = 0,
        keep_sent: float = 0.0,
        **worker: Unpack[WorkerOptions],
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.max_waiting = max_waiting
        #: seconds a delivered row stays in the outbox before :meth:`run` deletes it (0: kept for ever)
        self.keep_sent = keep_sent
        #: delivered rows deleted so far
        self.pruned = 0
        self._clock = worker.get("clock", time.time)
        self._sleep = worker.get("sleep", asyncio.sleep)
        self.workers = {
            name: SinkWorker(outbox, sink, client, on_dead=self._dead_letter, **worker)
            for name, sink in sinks.items()
        }
        #: per failing sink: (monotonic time of its last dead-letter notice, dead letters since)
        self._dead_notices: dict[str, tuple[float, int]] = {}
        self._notices: set[asyncio.Task[Any]] = set()
        for name, sink in sinks.items():
            if sink.name != name:
                raise ValueError(f"sink {sink!r} is configured under another name, {name!r}")

    def __repr__(self) -> str:
        return f"AlertDispatcher({sorted(self.workers)})"

    def _dead_letter(self, entry: OutboxEntry, reason: str) -> None:
        """A worker dead-lettered ``entry``: raise it on the other sinks (see module docstring)."""
        others = [name for name in self.workers if name != entry.sink]
        if entry.alert.rule == DEAD_RULE or not others:
            return
        now = time.monotonic()
        last, held = self._dead_notices.get(entry.sink, (-math.inf, 0))
        if now - last < DEAD_NOTICE_EVERY:
            self._dead_notices[entry.sink] = (last, held + 1)
            return
        self._dead_notices[entry.sink] = (now, 0)
        more = f" ({held} more since the last notice)" if held else ""
        notice = Alert(
            kind=AlertKind.NOTICE,
            dedup_key=dedup_key(DEAD_RULE, entry.sink),
            rule=DEAD_RULE,
            title=f"alerts to {entry.sink} are failing",
            severity="high",
            summary=f"{entry.sink} refused alert {entry.id} ({entry.alert.title}): {reason}{more}",
            time=self._clock(),
            details={"sink": entry.sink, "entry": entry.id, "dedup_key": entry.dedup_key, "more": held},
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (workers settle rows on the event loop; this is only a guard)
            log.error("alerts: dead-letter notice not sent, no event loop: %s", notice.summary)
            return
        task = loop.create_task(self._notify_others(others, notice))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _notify_others(self, names: list[str], notice: Alert) -> None:
        try:
            await self.submit(names, notice)
        except Exception:
            log.exception("alerts: dead-letter notice not stored: %s", notice.summary)

    async def submit(self, sink_names: Iterable[str], alert: Alert) -> list[int]:
        """Store ``alert`` for every sink named (committed before this returns), then wake their workers.
        ValueError, storing nothing, when a name is not a configured sink."""
        return (await self.submit_many([(sink_names, alert)]))[0]

    async def submit_many(self, items: Iterable[tuple[Iterable[str], Alert]]) -> list[list[int]]:
        """:meth:`submit` for many alerts at once: one transaction, in a worker thread (the event loop does
        not wait for the commit's disk sync), then the workers are woken; the ids per item, in order.
        ValueError, storing nothing, when a name is not a configured sink."""
        wanted = [(list(dict.fromkeys(names)), alert) for names, alert in items]
        unknown = sorted({n for names, _ in wanted for n in names if n not in self.workers})
        if unknown:
            raise ValueError(f"no sink configured as {', '.join(unknown)}")
        # per sink: its undelivered rows (read once, when a shedding decision first needs it) and the rows
        # this batch keeps for it before the decision, so each alert is judged as if those were committed
        waiting: dict[str, int] = {}
        added: dict[str, int] = {}
        kept: list[tuple[list[str], Alert]] = []
        for asked, alert in wanted:
            names = asked
            if self.max_waiting and alert.kind is AlertKind.TRIGGER and alert.severity.lower() in SHEDDABLE:
                names = [name for name in asked if not self._shed(name, alert, waiting, added)]
            for name in names:
                added[name] = added.get(name, 0) + 1
            kept.append((names, alert))
        if not any(names for names, _ in kept):
            return [[] for _ in kept]
        ids = await asyncio.to_thread(self.outbox.enqueue_batch, kept)
        for (names, _), row in zip(kept, ids, strict=True):
            for name, entry_id in zip(names, row, strict=True):
                self.workers[name].notify(entry_id)
        return ids

    def _shed(self, name: str, alert: Alert, waiting: dict[str, int], added: dict[str, int]) -> bool:
        """Whether to leave ``alert`` out for sink ``name`` (a low-severity trigger, and the sink's outbox
        already holds ``max_waiting`` undelivered rows, counting those kept earlier in the same batch):
        counted, and logged at the first and every 100th."""
        if name not in waiting:
            waiting[name] = self.outbox.waiting(name)
        if waiting[name] + added.get(name, 0) < self.max_waiting:
            return False
        counters = self.workers[name].counters
        counters.shed += 1
        if counters.shed % 100 == 1:
            log.warning(
                "alerts: sink %s has %d or more alerts waiting: shedding %s-severity alerts (%d so far; "
                "higher severities are kept)",
                name, self.max_waiting, alert.severity, counters.shed,
            )  # fmt: skip
        return True

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per sink: :meth:`SinkWorker.stats` (counters, outbox rows per state, oldest pending age)."""
        rows = self.outbox.stats()
        return {name: worker.summary(rows.get(name, {})) for name, worker in self.workers.items()}

    async def run(self, stop: asyncio.Event) -> None:
        """Recover the outbox (rows a crash left ``sending`` are sent again), then run every worker until
        ``stop``. A worker that fails (a bug, the store unwritable) is logged and restarted after a second,
        without touching the others."""
        recovered = self.outbox.recover()
        if recovered:
            log.warning("alerts: %d alert(s) were being sent when Vigil stopped: sending again", recovered)
        tasks = [self._supervise(worker, stop) for worker in self.workers.values()]
        if self.keep_sent > 0:
            tasks.append(self._prune(stop))
        await asyncio.gather(*tasks)

    async def _prune(self, stop: asyncio.Event) -> None:
        """Delete delivered rows older than ``keep_sent``, at start and every :data:`PRUNE_EVERY` seconds.

        Why: every alert leaves a row, and an always-on daemon would otherwise keep them all; the outbox's
        per-sink counts (``/metrics``, ``GET /v1/alerts``) are a pass over its rows. Dead rows are kept (an
        operator reads them, ``vigil alerts list --state dead``), and so is everything not yet delivered."""
        every = min(PRUNE_EVERY, max(1.0, self.keep_sent / 4))
        while not stop.is_set():
            gone = 0
            try:
                cut = self._clock() - self.keep_sent
                while not stop.is_set():  # in slices: each a short transaction
                    n = await asyncio.to_thread(self.outbox.prune, cut, PRUNE_SLICE)
                    gone += n
                    if n < PRUNE_SLICE:
                        break
            except Exception as exc:  # a locked or failing store: try again at the next round
                log.warning("alerts: could not prune delivered alerts: %s", redact_text(str(exc)))
            if gone:
                self.pruned += gone
                log.info("alerts: deleted %d delivered alert(s) older than alerts.keep_sent", gone)
            await pause(stop, every, self._sleep)

    async def _supervise(self, worker: SinkWorker, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await worker.run(stop)
            except Exception as exc:
                log.error(
                    "alerts: worker %s failed: %s: %s", worker.name, type(exc).__name__, redact_text(str(exc))
                )
                await pause(stop, 1.0, self._sleep)

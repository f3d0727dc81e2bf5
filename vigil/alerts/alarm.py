"""The alarm: Vigil telling people that Vigil itself is degraded, by a path that needs no disk.

Every other alert goes through the durable outbox, a table on the store's disk. The moment the daemon
degrades is often the moment that disk is full or failing (reliability G1: the audit log cannot be
appended, so audited operations fail closed), and an alert about it written to the same disk may never
leave. So :class:`Alarm` watches the daemon's *degraded* reason (``vigil.api.degraded.degraded_reason``)
and, on each change, sends straight from memory to the sinks a ``critical`` alert routes to:

* degraded: a ``trigger`` (``rule: vigil.degraded``, the reason as summary), which pages on PagerDuty;
* recovered: a ``resolve`` with the same ``dedup_key``, which closes that page.

Best effort by design, and said so: a few attempts per sink with a short backoff, then it is logged at
ERROR (the logs and ``vigil_degraded`` on ``/metrics`` remain). Nothing is written to the store; a restart
while degraded alarms again. The reason is polled every ``every`` seconds: transitions shorter than that
can pass unseen, which ``vigil_degraded`` and the audit counters still show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from vigil.alerts.model import Alert, AlertKind, Sink, dedup_key
from vigil.alerts.redact import redact_text

log = logging.getLogger(__name__)

RULE = "vigil.degraded"
#: attempts per sink and transition, and the pause before each retry (seconds)
ATTEMPTS = 3
BACKOFF = 1.0


@dataclass
class AlarmStats:
    """What the alarm did since start: transitions seen, sends that reached a sink, and sends that did not."""

    raised: int = 0
    cleared: int = 0
    sent: int = 0
    failed: int = 0


class Alarm:
    """Watches ``reason()`` (None when healthy) and alarms ``sinks`` directly on every change."""

    def __init__(
        self,
        reason: Callable[[], str | None],
        sinks: Mapping[str, Sink],
        client: httpx.AsyncClient,
        *,
        every: float = 2.0,
        backoff: float = BACKOFF,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reason = reason
        self.sinks = dict(sinks)
        self.client = client
        self.every = every
        self.backoff = backoff
        self._clock = clock
        self._current: str | None = None
        self.stats = AlarmStats()
        self.key = dedup_key(RULE, "daemon")

    async def run(self, stop: asyncio.Event) -> None:
        """Check now and every ``every`` seconds until ``stop``."""
        while not stop.is_set():
            await self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)

    async def check(self) -> None:
        """One look at the reason; alarm when it appeared or went away (a changed reason is not news)."""
        try:
            reason = self._reason()
        except Exception as exc:  # the health check itself failing is a reason too
            reason = f"health check failed: {type(exc).__name__}: {exc}"
        if (reason is None) == (self._current is None):
            return
        self._current = reason
        if reason is not None:
            self.stats.raised += 1
            log.error("vigil is degraded: %s", redact_text(reason))
        else:
            self.stats.cleared += 1
            log.warning("vigil recovered: audited operations run again")
        if self.sinks:
            alert = self.alert(reason)
            await asyncio.gather(*(self._send(sink, alert) for sink in self.sinks.values()))

    def alert(self, reason: str | None) -> Alert:
        """The trigger for ``reason``, or the resolve when it is None."""
        if reason is None:
            return Alert(
                kind=AlertKind.RESOLVE, dedup_key=self.key, rule=RULE, title="Vigil recovered",
                severity="critical", time=self._clock(),
                summary="Audited operations (platform changes, actions, reloads) run again.",
            )  # fmt: skip
        return Alert(
            kind=AlertKind.TRIGGER, dedup_key=self.key, rule=RULE,
            title="Vigil is degraded: audited operations are refused", severity="critical",
            summary=redact_text(reason)[:1000], time=self._clock(),
            details={"what stops": "platform changes, remediation actions, rule reloads, incident changes",
                     "what goes on": "ingestion and detection (events are safe in the store)"},
        )  # fmt: skip

    async def _send(self, sink: Sink, alert: Alert) -> None:
        last = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(self.backoff * attempt)
            try:
                delivery = await sink.send(self.client, alert)
            except Exception as exc:  # a sink bug must not end the alarm for the others
                last = f"{type(exc).__name__}: {exc}"
                continue
            if delivery.outcome == "sent":
                self.stats.sent += 1
                return
            last = delivery.reason or delivery.outcome
            if delivery.outcome == "dead":
                break
        self.stats.failed += 1
        log.error("alarm not delivered to %s (%s): %s", sink.name, alert.kind.value, redact_text(last))

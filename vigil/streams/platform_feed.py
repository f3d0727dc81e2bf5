"""The platform as a source: every change on the local platform becomes an audited, detected event.

The daemon hands one :class:`PlatformFeed` to the key vault, the storage and the compute registry as their
:class:`~vigil.platform.events.PlatformObserver`. For each change it

1. appends the change to the audit log (through the audit log's own observer), and
2. normalises the change's record (``vigil.platform/1``) and accepts it into the store's event log, under the
   source name ``platform``, then wakes the detect stage (an attestation verdict is stored a second time as
   an ``attestation`` event, so the attestation rules judge local nodes as they judge MAA results),

both *before* the provider makes the change durable (the observer contract). Either failing raises, so the
provider aborts: an unaudited change, or one Vigil would not see, does not happen. The audit comes first
because it is the stronger promise (issue 6: no action runs unaudited); a change audited but then not stored
as an event is an intent on record without an effect, which the audit log's readers expect.

Bootstrap: the audit log keeps its signing keys in the vault, so its first start creates keys, which are
platform changes, before the audit log can take records. Until :meth:`PlatformFeed.attach_audit` is called,
changes are held in order and appended to the audit log when it attaches; no change is left unaudited.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from vigil.errors import NormalizeError, VigilError
from vigil.events.normalizers.attestation import AttestationNormalizer
from vigil.events.normalizers.platform import PlatformNormalizer
from vigil.platform.errors import UnavailableError
from vigil.platform.events import PlatformEvent, PlatformObserver
from vigil.platform.local.attestation import EVENT_KIND as ATTESTATION_EVENT
from vigil.platform.local.attestation import attestation_record
from vigil.store.sqlite import Store

log = logging.getLogger(__name__)

SOURCE = "platform"


@dataclass
class FeedStats:
    """Counters for ``/metrics``: changes fed into the pipeline, and refusals caused by the feed."""

    events: int = 0
    denied: int = 0
    failures: int = 0


class PlatformFeed:
    """The daemon's :class:`PlatformObserver`: audit log first, then the store's event log."""

    def __init__(self, store: Store, *, wake: Callable[[], None] | None = None) -> None:
        self._store = store
        self._wake = wake
        self._normalizer = PlatformNormalizer()
        self._attestation = AttestationNormalizer()
        self._audit: PlatformObserver | None = None
        self._held: list[PlatformEvent] = []
        self.stats = FeedStats()

    async def attach_audit(self, audit: PlatformObserver) -> None:
        """Start auditing; the changes made before (the audit log's own key set-up) are appended first."""
        held, self._held = self._held, []
        for event in held:
            await audit.record(event)
        self._audit = audit

    async def record(self, event: PlatformEvent) -> None:
        try:
            if self._audit is not None:
                await self._audit.record(event)
            else:
                self._held.append(event)
            self._accept(event)
        except (VigilError, sqlite3.Error, OSError) as exc:
            # the provider aborts the change; its caller (a remediator, the API: 503) learns why
            self.stats.failures += 1
            raise UnavailableError(
                f"{event.kind} on {event.subject} not done: it cannot be recorded: {exc}"
            ) from exc
        self.stats.events += 1
        if event.outcome == "denied":
            self.stats.denied += 1
        if self._wake is not None:
            self._wake()

    def _accept(self, event: PlatformEvent) -> None:
        try:
            events = [self._normalizer.normalize(event.to_record())]
            if event.kind == ATTESTATION_EVENT:  # also as an attestation result, for the attestation rules
                events.append(self._attestation.normalize(attestation_record(event)))
        except NormalizeError as exc:  # a provider bug, not input: make it loud, and refuse the change
            log.error("platform event %s cannot be normalised: %s", event.kind, exc)
            raise
        self._store.accept(events, [], SOURCE)

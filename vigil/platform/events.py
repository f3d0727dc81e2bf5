"""What every mutating platform operation reports: one :class:`PlatformEvent`, before the change is durable.

Vigil watches its own platform like any other source (kind ``platform.*`` in the pipeline) and writes
every change to the audit log. Both go through one :class:`PlatformObserver` that each provider is given.
The provider awaits :meth:`PlatformObserver.record` *before* it makes the change durable, and an
exception from it aborts the operation: when the audit log cannot be written, nothing changes
(fail closed, issue 6). A crash between the record and the change leaves an intent without an effect,
never an effect without a record.

Details never carry key material, tokens or secrets: names, versions, principals, policy hashes, counts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PlatformEvent:
    """One change on the platform: ``kind`` like ``platform.key.rotate``, by ``principal`` on ``subject``."""

    kind: str
    principal: str
    subject: str
    details: dict[str, Any] = field(default_factory=dict)
    outcome: str = "success"
    time: float = field(default_factory=time.time)
    #: unique per operation, so a re-delivered record is one event (the pipeline dedupes on it)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_record(self) -> dict[str, Any]:
        """The raw record the ``platform`` normalizer turns into a canonical event."""
        return {
            "schema": SCHEMA,
            "id": self.id,
            "kind": self.kind,
            "principal": self.principal,
            "subject": self.subject,
            "outcome": self.outcome,
            "time": self.time,
            "details": dict(self.details),
        }


#: the record format the ``platform`` normalizer reads (:mod:`vigil.events.normalizers.platform`)
SCHEMA = "vigil.platform/1"


class PlatformObserver(Protocol):
    """Receives every platform event; raising aborts the operation that produced it."""

    async def record(self, event: PlatformEvent) -> None: ...


class NullObserver:
    """Records nothing: for tools and tests that run a provider without a daemon around it."""

    async def record(self, event: PlatformEvent) -> None:
        return None


class CollectingObserver:
    """Keeps every event in a list (tests, and the CLI when it runs a provider directly)."""

    def __init__(self) -> None:
        self.events: list[PlatformEvent] = []

    async def record(self, event: PlatformEvent) -> None:
        self.events.append(event)

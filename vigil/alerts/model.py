"""What an alert is, what a sink must do with it, and what a delivery attempt can end in.

An :class:`Alert` is sink-neutral: the router builds it from a finding (or an incident change, or a response
decision) and every sink renders it in its own format. Its ``dedup_key`` comes from the rule and the group
(never from the event), so every finding of one incident updates one page instead of opening a new one, and
``acknowledge`` / ``resolve`` address that same page.

A sink's :meth:`Sink.send` makes exactly one attempt and classifies the answer as a :class:`Delivery`:
``sent``, ``retry`` (with the server's ``Retry-After`` when it gave one) or ``dead`` (a 400: retrying the
same payload cannot succeed). Retries, backoff, rate limits and the durable outbox are the core's
(:mod:`vigil.alerts.outbox`), the same for every sink.
"""

from __future__ import annotations

import enum
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from vigil.registry import Registry


class AlertKind(enum.StrEnum):
    TRIGGER = "trigger"  # a finding opened or updated an incident
    ACKNOWLEDGE = "acknowledge"  # a person acknowledged the incident in Vigil
    RESOLVE = "resolve"  # the incident was resolved, or its remediation verified
    NOTICE = "notice"  # the response engine tells people something (blast radius, approval waiting, dry run)


def dedup_key(rule: str, group_key: str) -> str:
    """The stable key of one rule and group: the same page for every finding of one incident."""
    digest = hashlib.blake2b(f"{rule}\x1f{group_key}".encode(), digest_size=12).hexdigest()
    return f"vigil-{rule}-{digest}"[:255]


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification's content, before any sink formats it. JSON-ready throughout."""

    kind: AlertKind
    dedup_key: str
    rule: str
    title: str
    severity: str  # informational | low | medium | high | critical
    summary: str
    time: float
    group: dict[str, str] = field(default_factory=dict)
    incident_id: str | None = None
    finding_id: str | None = None
    #: matches folded into this alert by storm grouping (1 when alone)
    count: int = 1
    #: the finding and whatever else a responder needs (already redacted)
    details: dict[str, Any] = field(default_factory=dict)
    #: remediation actions taken or pending: [{"remediation", "target", "state", "id"}]
    actions: list[dict[str, Any]] = field(default_factory=list)
    #: name -> URL (incident, approve, reject) in Vigil
    links: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value, "dedup_key": self.dedup_key, "rule": self.rule, "title": self.title,
            "severity": self.severity, "summary": self.summary, "time": self.time, "group": self.group,
            "incident_id": self.incident_id, "finding_id": self.finding_id, "count": self.count,
            "details": self.details, "actions": self.actions, "links": self.links,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        return cls(
            kind=AlertKind(data["kind"]), dedup_key=data["dedup_key"], rule=data["rule"], title=data["title"],
            severity=data["severity"], summary=data["summary"], time=float(data["time"]),
            group=dict(data.get("group") or {}), incident_id=data.get("incident_id"),
            finding_id=data.get("finding_id"), count=int(data.get("count", 1)),
            details=dict(data.get("details") or {}), actions=list(data.get("actions") or []),
            links=dict(data.get("links") or {}),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one attempt ended: ``sent``, ``retry`` (``retry_after``: seconds the server asked) or ``dead``."""

    outcome: str
    reason: str = ""
    retry_after: float | None = None
    status: int | None = None


class Sink(ABC):
    """One destination (a PagerDuty routing key, a Teams workflow URL, ...). Built from its config section."""

    #: registry name, as rules and config write it (``alert: [pagerduty]``)
    kind: ClassVar[str]
    #: published limits, kept below: at most ``per_second`` and ``per_hour`` sends (None: no limit)
    per_second: ClassVar[float | None] = None
    per_hour: ClassVar[float | None] = None

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config

    @abstractmethod
    def render(self, alert: Alert) -> dict[str, Any]:
        """The JSON body this sink sends for ``alert`` (pure; tests validate it against the sink's schema)."""

    @abstractmethod
    async def send(self, client: httpx.AsyncClient, alert: Alert) -> Delivery:
        """One attempt; never raises for an HTTP or network failure (that is a ``retry`` Delivery)."""

    def __repr__(self) -> str:  # configs hold URLs with secrets in them: never print them
        return f"{type(self).__name__}({self.name!r})"


#: every sink kind, by name (entry-point group ``vigil.sinks`` for third-party ones)
sinks: Registry[type[Sink]] = Registry("vigil.sinks")
for _kind, _cls in (
    ("pagerduty", "PagerDutySink"),
    ("teams", "TeamsSink"),
    ("slack", "SlackSink"),
    ("webhook", "WebhookSink"),
    ("console", "ConsoleSink"),
):
    sinks.add(_kind, f"vigil.alerts.{_kind}:{_cls}")

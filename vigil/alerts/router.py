"""Which sinks an alert goes to, and what an alert about a finding, an incident or an action says.

Routing is the union of three sources, restricted to the sinks that are configured:

1. the rule's own ``actions: - alert: [pagerduty, teams]``;
2. ``alerts.by_severity`` for the finding's severity;
3. ``alerts.by_tag`` for each of the rule's tags.

When that union is empty (the rule names only sinks this installation does not have, or none at all), the
alert goes to ``alerts.default`` — an alert is never silently unrouted; the names a rule asked for but that
are not configured are counted (``vigil_alerts_unrouted_total{sink}``) so an operator sees the gap.

The content is built here once, sink-neutral (:class:`~vigil.alerts.model.Alert`), and redacted
(:func:`~vigil.alerts.redact.redact`) before it is stored in the outbox: a secret that reached an event never
reaches a sink, a log line or the outbox table.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from vigil.alerts.model import Alert, AlertKind, dedup_key
from vigil.alerts.redact import redact
from vigil.rules.model import AlertAction, Rule
from vigil.sections import AlertSettings

T = TypeVar("T")

#: how many event ids an alert carries (the incident in Vigil has them all)
EVENT_IDS = 10


class Router:
    """Sink names for a rule and severity, among the configured ``sinks``."""

    def __init__(self, settings: AlertSettings, configured: set[str]) -> None:
        self.settings = settings
        self.configured = configured
        self.unrouted: Counter[str] = Counter()

    def route(self, rule: Rule | None, severity: str) -> list[str]:
        wanted: list[str] = []
        if rule is not None:
            wanted += [s for a in rule.actions if isinstance(a, AlertAction) for s in a.sinks]
            for tag in rule.tags:
                wanted += self.settings.by_tag.get(tag, [])
        wanted += self.settings.by_severity.get(severity, [])
        chosen = [name for name in dict.fromkeys(wanted) if name in self.configured]
        for name in dict.fromkeys(wanted):
            if name not in self.configured:
                self.unrouted[name] += 1
        return chosen or [name for name in self.settings.default if name in self.configured]


def finding_alert(
    finding: Mapping[str, Any],
    group_key: str,
    finding_id: str,
    incident_id: str | None,
    base_url: str,
    *,
    redacted: bool = True,
) -> Alert:
    """The trigger alert of one stored finding (its JSON as the store keeps it).

    ``redacted=False`` leaves the content as it is, for a caller whose alerts all go through the outbox,
    which redacts each alert it stores (:meth:`~vigil.alerts.outbox.Outbox.enqueue_batch`): the alert stage,
    where the grouper folds most findings into a count and never sends their alerts, so redacting each
    was most of an alert's cost (a dozen strings, most of them seen once)."""
    clean = redact if redacted else _as_is
    rule = str(finding.get("rule", ""))
    group = {str(k): str(v) for k, v in (finding.get("group") or {}).items()}
    where = ", ".join(f"{k}={v}" for k, v in group.items()) or "no group"
    title = str(finding.get("title") or rule)
    details = {
        "rule": rule,
        "score": finding.get("score"),
        "form": finding.get("form", "event"),
        "value": finding.get("value"),
        "suppressed": finding.get("suppressed", 0),
        "event_ids": list(finding.get("event_ids") or [])[:EVENT_IDS],
        "finding_time": finding.get("time"),
    }
    return Alert(
        kind=AlertKind.TRIGGER,
        dedup_key=dedup_key(rule, group_key),
        rule=rule,
        title=title,
        severity=str(finding.get("severity") or "medium"),
        summary=clean(f"{title} ({where})")[:1024],
        time=_epoch(finding.get("time")),  # when it happened: a backlog after an outage is summarised
        group=clean(group),
        incident_id=incident_id,
        finding_id=finding_id,
        details=clean(details),
        links=_links(base_url, incident_id),
    )


def _as_is(value: T) -> T:
    return value


def incident_alert(incident: Mapping[str, Any], kind: AlertKind, note: str, base_url: str) -> Alert:
    """Acknowledge or resolve the page of an incident (same dedup key as its findings' triggers)."""
    rule = str(incident.get("rule", ""))
    incident_id = str(incident.get("id", ""))
    return Alert(
        kind=kind,
        dedup_key=dedup_key(rule, str(incident.get("group_key", ""))),
        rule=rule,
        title=str(incident.get("title") or rule),
        severity=str(incident.get("severity") or "medium"),
        summary=redact(f"incident {incident_id} {kind.value}d in Vigil" + (f": {note}" if note else ""))[
            :1024
        ],
        time=time.time(),
        incident_id=incident_id,
        details=redact({"note": note}),
        links=_links(base_url, incident_id),
    )


def notice_alert(kind: str, message: str, details: Mapping[str, Any], base_url: str) -> Alert:
    """What the response engine tells people (blast radius refused, approval waiting, dry-run plan)."""
    rule = str(details.get("rule") or "vigil.response")
    action = details.get("action") or details.get("id")
    links = {"action": f"{base_url}/v1/actions/{action}"} if action and base_url else {}
    return Alert(
        kind=AlertKind.NOTICE,
        dedup_key=dedup_key(rule, f"response:{kind}:{action or message}"),
        rule=rule,
        title=f"Vigil response: {kind.replace('_', ' ')}",
        severity="high" if kind in ("blast_radius", "failure") else "medium",
        summary=redact(message)[:1024],
        time=time.time(),
        details=redact(dict(details)),
        links=links,
    )


def _epoch(value: Any) -> float:
    """A finding's time (ISO 8601 as the store writes it) in Unix seconds; now when it is unreadable."""
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _links(base_url: str, incident_id: str | None) -> dict[str, str]:
    if not base_url or not incident_id:
        return {}
    return {"incident": f"{base_url}/v1/incidents/{incident_id}"}

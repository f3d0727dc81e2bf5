"""PagerDuty Events API v2: one incident per rule and group, acknowledged and resolved from Vigil.

Every event carries the alert's ``dedup_key``, which the core derives from the rule and the group, never
from the event (:func:`vigil.alerts.model.dedup_key`). PagerDuty applies events with the same key and the
same routing key to the one open alert, so a storm of findings is one page with updates, a retry after an
ambiguous failure (a reset after PagerDuty accepted the request) cannot open a second incident, and
``acknowledge`` and ``resolve`` address the page that ``trigger`` opened (``../shared/reference/azure.md``
§6.2). Peers get this wrong: falcosidekick sends no ``dedup_key`` and a hard-coded severity.

What each :class:`AlertKind` becomes:

- ``trigger``: the full event. ``payload.summary`` is ``[SEVERITY] title`` with the match count, cut to
  1,024 characters with an ellipsis; ``payload.source`` is the configured ``source``, else the group's
  resource or target, else ``vigil``; ``payload.severity`` maps critical→critical, high→error,
  medium→warning, low and informational→info, anything unknown→warning (a typo neither pages as critical
  nor goes quiet); ``payload.class`` is the rule; ``custom_details`` hold the summary, count, group,
  incident and finding ids, the remediation actions and the finding's details; ``links`` are the alert's
  http(s) links (incident, approve, reject), ``client_url`` the incident link.
- ``acknowledge`` / ``resolve``: only ``routing_key``, ``event_action`` and ``dedup_key``: all the API
  needs. PagerDuty drops them for an unknown or already resolved key, which is the right outcome.
- ``notice``: a **change event** (``POST …/v2/change/enqueue`` beside the configured URL, or
  ``change_url``). A notice (an approval waiting, a dry run, a blast-radius stop) is information about an
  incident, not a new one: a change event shows on the service's timeline and never pages, where a
  ``trigger`` with severity ``info`` would open an alert that somebody must resolve by hand.

Size: an event over 512 KB is a 400. Details are trimmed first, then actions, then the group, so a large
finding is never dead-lettered for its size (reliability.md D2); the incident link carries the rest.

Answers: 202 is ``sent``; 400 is ``dead`` with the body's ``message`` and ``errors``; 429, 5xx and network
failures are ``retry`` with ``Retry-After`` when given. PagerDuty allows about 120 events a minute per
routing key (``per_second = 2``); the core's token bucket stays below it. The routing key is the
credential: it is scrubbed from every reason and never shown by ``repr``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from vigil.alerts.model import Alert, AlertKind
from vigil.alerts.webhook import HttpSink, truncate
from vigil.errors import ConfigError

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_LIMIT = 1024
DEDUP_KEY_LIMIT = 255
#: PagerDuty's limit is 512 KB per event; keep a margin for what we cannot measure (headers are separate)
EVENT_LIMIT = 512 * 1024 - 4096
SEVERITY = {
    "critical": "critical",
    "high": "error",
    "medium": "warning",
    "low": "info",
    "informational": "info",
}
SEVERITIES = frozenset({"critical", "error", "warning", "info"})
ACTIONS_KEPT = 20


def iso_time(epoch: float) -> str:
    """``2026-11-24T09:47:31.118Z``: the ISO 8601 form PagerDuty's examples use."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def http_links(alert: Alert) -> list[dict[str, str]]:
    """``[{href, text}]`` for the alert's http(s) links, named for people (``approve`` → ``Approve``)."""
    return [
        {"href": url, "text": name.replace("_", " ").capitalize()}
        for name, url in alert.links.items()
        if url.startswith(("https://", "http://"))
    ]


class PagerDutySink(HttpSink):
    """PagerDuty Events v2. Config: ``routing_key`` (secret); optional ``url``, ``change_url``, ``source``."""

    kind = "pagerduty"
    per_second = 2.0  # about 120 events a minute per routing key

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, {**config, "url": config.get("url") or DEFAULT_URL})
        key = config.get("routing_key")
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(f"alert sink {name!r} (pagerduty): routing_key is required")
        self._routing_key = key.strip()
        self._add_secret(self._routing_key)
        self.change_url = self._require_url(config.get("change_url") or self._change_url(self.url))
        self.source = str(config.get("source") or "")

    @staticmethod
    def _change_url(url: str) -> str:
        """``…/v2/enqueue`` → ``…/v2/change/enqueue`` (the same host and region)."""
        split = urlsplit(url)
        base = split.path.rstrip("/").rpartition("/")[0]
        return urlunsplit((split.scheme, split.netloc, f"{base}/change/enqueue", "", ""))

    def endpoint(self, alert: Alert) -> str:
        return self.change_url if alert.kind is AlertKind.NOTICE else self.url

    def render(self, alert: Alert) -> dict[str, Any]:
        if alert.kind is AlertKind.NOTICE:
            return self._change_event(alert)
        event: dict[str, Any] = {
            "routing_key": self._routing_key,
            "event_action": alert.kind.value,
            "dedup_key": alert.dedup_key[:DEDUP_KEY_LIMIT],
        }
        if alert.kind is not AlertKind.TRIGGER:
            return event
        event["payload"] = {
            "summary": self._summary(alert),
            "source": self._source(alert),
            "severity": SEVERITY.get(alert.severity.lower(), "warning"),
            "timestamp": iso_time(alert.time),
            "class": alert.rule,
            "custom_details": self._details(alert),
        }
        if links := http_links(alert):
            event["links"] = links
        event["client"] = "Vigil"
        if alert.links.get("incident", "").startswith(("https://", "http://")):
            event["client_url"] = alert.links["incident"]
        return self._fit(event)

    def _change_event(self, alert: Alert) -> dict[str, Any]:
        event: dict[str, Any] = {
            "routing_key": self._routing_key,
            "payload": {
                "summary": truncate(f"[notice] {alert.title}: {alert.summary}", SUMMARY_LIMIT),
                "source": self._source(alert),
                "timestamp": iso_time(alert.time),
                "custom_details": self._details(alert),
            },
        }
        if links := http_links(alert):
            event["links"] = links
        return self._fit(event)

    @staticmethod
    def _summary(alert: Alert) -> str:
        count = f" ({alert.count} matches)" if alert.count > 1 else ""
        return truncate(f"[{alert.severity.upper()}] {alert.title}{count}", SUMMARY_LIMIT)

    def _source(self, alert: Alert) -> str:
        group = alert.group
        return self.source or group.get("resource") or group.get("target") or "vigil"

    @staticmethod
    def _details(alert: Alert) -> dict[str, Any]:
        details: dict[str, Any] = {
            "summary": alert.summary,
            "rule": alert.rule,
            "count": alert.count,
            "group": alert.group,
            "incident_id": alert.incident_id,
            "finding_id": alert.finding_id,
            "actions": alert.actions,
            "details": alert.details,
        }
        return {key: value for key, value in details.items() if value not in (None, {}, [])}

    @staticmethod
    def _fit(event: dict[str, Any]) -> dict[str, Any]:
        """Shrink ``custom_details`` until the event is under PagerDuty's 512 KB."""
        custom = event["payload"]["custom_details"]
        steps = (
            ("details", lambda v: {"omitted": "too large for PagerDuty; see the incident in Vigil"}),
            ("actions", lambda v: [*v[:ACTIONS_KEPT], {"omitted": max(0, len(v) - ACTIONS_KEPT)}]),
            ("group", lambda v: {"omitted": "too large for PagerDuty"}),
            ("actions", lambda v: [{"omitted": "too large for PagerDuty"}]),
            ("summary", lambda v: truncate(v, 4096)),
        )
        for key, shrink in steps:
            if len(orjson.dumps(event)) <= EVENT_LIMIT:
                break
            if key in custom:
                custom[key] = shrink(custom[key])
        return event

    def detail(self, response: httpx.Response) -> str:
        """A 400's ``message`` and ``errors`` (``Event object is invalid: …``), else the body's text."""
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return response.text
        if not isinstance(data, dict):
            return response.text
        errors = data.get("errors")
        listed = "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
        message = str(data.get("message") or data.get("status") or "")
        return ": ".join(part for part in (message, listed) if part)

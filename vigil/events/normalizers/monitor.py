"""Azure Monitor alerts in the common alert schema (action-group webhooks) - reference/azure.md §2.3.

The body is ``{"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {...},
"alertContext": {...}, "customProperties": {...}}}``. ``essentials`` is the same for every signal type;
``alertContext`` depends on ``monitoringService`` (metric ``condition.allOf[]``, log alerts V2
``condition.allOf[].searchQuery``, activity-log alerts an echo of the Activity Log event). Unknown keys are
ignored, as the schema grows.

Traps handled:

* A stateful alert is delivered twice, ``monitorCondition`` ``Fired`` then ``Resolved``, with the same
  ``alertId``. They are different records, so the event id hashes ``alertId`` (lower-cased) together with the
  condition: ``ma:`` + BLAKE2b. Re-delivery (the action group retries) gives the same id.
* ``action`` is ``alert.<condition>`` (``alert.fired``, ``alert.resolved``) so that rules can tell a new
  alert from its all-clear. ``time`` is ``firedDateTime``, or ``resolvedDateTime`` for a resolution (the
  schema only promises ``resolvedDateTime`` for metric alerts, so a resolution without it falls back to
  ``firedDateTime``).
* ``severity`` is ``Sev0``..``Sev4``: Sev0 and Sev1 are ``high``, Sev2 ``medium``, Sev3 ``low``, Sev4
  ``informational``; the original is kept in ``labels["monitor.severity"]`` because Sev0 and Sev1 collapse.
* ``alertTargetIDs`` are ARM ids (lower-cased already); the first one is ``resource``.
* Activity-log alerts carry ``caller`` and, as JSON *text*, ``claims`` and ``httpRequest``. They are decoded
  (text that is not JSON is a :class:`~vigil.errors.NormalizeError` naming the field) and give ``actor``:
  claims as in the Activity Log, ``caller`` as the name when it is a UPN (or as the id when the claims have
  no object id and ``caller`` is not the app id), ``httpRequest.clientIpAddress`` as the IP (else the
  ``ipaddr`` claim).
* ``raw`` of an ``azure.monitor.alert`` event is the body with ``data.alertContext.claims`` and
  ``data.alertContext.httpRequest`` replaced by their decoded values (new dictionaries along that path; the
  source body itself is left untouched), so rules reach ``raw.data.alertContext.httpRequest.method``.

Labels: ``monitor.alert_id`` (as sent), ``monitor.alert_rule``, ``monitor.severity``, ``monitor.signal_type``,
``monitor.monitoring_service``, ``monitor.condition``, ``monitor.operation`` (activity-log alerts, lower-cased
operation name) and ``monitor.custom.<key>`` for each string value of ``customProperties``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.arm import parse_resource_id
from vigil.events.fields import (
    actor_from_claims,
    hash_id,
    json_in_string,
    json_type,
    lower,
    parse_time,
    strip_port,
    text,
)
from vigil.events.model import NO_ACTOR, NO_RESOURCE, Actor, Event, Resource, Severity, freeze
from vigil.events.normalize import Normalizer

SCHEMA_ID: Final = "azureMonitorCommonAlertSchema"

SEVERITY: Final[dict[str, Severity]] = {
    "sev0": "high",
    "sev1": "high",
    "sev2": "medium",
    "sev3": "low",
    "sev4": "informational",
}


class CommonAlertNormalizer(Normalizer):
    """An action-group webhook body in the common alert schema (metric, log, activity-log alerts ...)."""

    name = "monitor-alert"
    kind = "azure.monitor.alert"
    summary = "Azure Monitor alerts in the common alert schema (action-group webhooks)"
    priority = 35

    def detect(self, record: Mapping[str, Any]) -> bool:
        schema = record.get("schemaId")
        return schema == SCHEMA_ID or (
            isinstance(schema, str) and schema.lower() == "azuremonitorcommonalertschema"
        )

    def normalize(self, record: dict[str, Any]) -> Event:
        data = record.get("data")
        if type(data) is not dict:
            raise NormalizeError("data: missing or not an object")
        essentials = data.get("essentials")
        if type(essentials) is not dict:
            raise NormalizeError("data.essentials: missing or not an object")
        alert_id = essentials.get("alertId")
        if not isinstance(alert_id, str) or not alert_id.strip():
            raise NormalizeError("data.essentials.alertId: missing or not a string")
        condition = essentials.get("monitorCondition")
        if not isinstance(condition, str) or not condition.strip():
            raise NormalizeError("data.essentials.monitorCondition: missing or not a string")
        cond = "".join(condition.lower().split())

        fired = essentials.get("firedDateTime")
        resolved = essentials.get("resolvedDateTime") if cond == "resolved" else None
        if resolved:
            when = parse_time(resolved, "data.essentials.resolvedDateTime")
        elif fired:
            when = parse_time(fired, "data.essentials.firedDateTime")
        elif cond == "resolved":
            raise NormalizeError("data.essentials.resolvedDateTime: missing, and no firedDateTime")
        else:
            raise NormalizeError("data.essentials.firedDateTime: missing")

        resource = _target(essentials.get("alertTargetIDs"))

        raw: dict[str, Any] = record
        actor = NO_ACTOR
        context = data.get("alertContext")
        if type(context) is dict:
            claims = json_in_string(context.get("claims"), "data.alertContext.claims")
            http = json_in_string(context.get("httpRequest"), "data.alertContext.httpRequest")
            actor = _actor(claims, http, context.get("caller"))
            if isinstance(context.get("claims"), str) or isinstance(context.get("httpRequest"), str):
                new_context = dict(context)
                if "claims" in context:
                    new_context["claims"] = claims
                if "httpRequest" in context:
                    new_context["httpRequest"] = http
                raw = dict(record)
                raw["data"] = {**data, "alertContext": new_context}

        severity = essentials.get("severity")
        labels: dict[str, str] = {
            "monitor.alert_id": alert_id.strip(),
            "monitor.condition": condition.strip(),
        }
        _put(labels, "monitor.alert_rule", essentials.get("alertRule"))
        _put(labels, "monitor.severity", severity)
        _put(labels, "monitor.signal_type", essentials.get("signalType"))
        _put(labels, "monitor.monitoring_service", essentials.get("monitoringService"))
        if type(context) is dict:
            _put(labels, "monitor.operation", lower(context.get("operationName")))
        custom = data.get("customProperties")
        if type(custom) is dict:
            for key, value in custom.items():
                _put(labels, f"monitor.custom.{key}", value)

        return Event(
            id=hash_id("ma:", f"{alert_id.strip().lower()}\x1f{cond}"),
            time=when,
            kind="azure.monitor.alert",
            action=f"alert.{cond}",
            outcome="unknown",
            severity=SEVERITY.get(severity.strip().lower()) if isinstance(severity, str) else None,
            actor=actor,
            resource=resource,
            labels=freeze(labels),
            raw=freeze(raw),
        )


def _target(targets: Any) -> Resource:
    """The first of ``alertTargetIDs`` (an array of ARM ids; a lone string is accepted too)."""
    if targets is None:
        return NO_RESOURCE
    if isinstance(targets, str):
        first: Any = targets
    elif type(targets) is list:
        first = targets[0] if targets else None
    else:
        raise NormalizeError(
            f"data.essentials.alertTargetIDs: expected an array of ARM ids, got {json_type(targets)}"
        )
    if first is None:
        return NO_RESOURCE
    if not isinstance(first, str):
        raise NormalizeError(
            f"data.essentials.alertTargetIDs[0]: expected an ARM id string, got {json_type(first)}"
        )
    return parse_resource_id(first.strip()) if first.strip() else NO_RESOURCE


def _actor(claims: Any, http: Any, caller: Any) -> Actor:
    """Actor of an activity-log alert from its decoded claims, HTTP request and ``caller``."""
    ip = strip_port(http.get("clientIpAddress")) if type(http) is dict else None
    caller = text(caller)
    if caller:
        claims = dict(claims) if type(claims) is dict else {}
        if "@" in caller:
            claims.setdefault("upn", caller)
        elif caller != claims.get("appid"):
            claims.setdefault("oid", caller)
    return actor_from_claims(claims, ip=ip)


def _put(labels: dict[str, str], key: str, value: Any) -> None:
    value = text(value)
    if value is not None and value.strip():
        labels[key] = value.strip()

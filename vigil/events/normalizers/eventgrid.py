"""Azure Event Grid deliveries, in the Event Grid schema and in CloudEvents 1.0 — reference/azure.md §3.

A webhook delivery is a JSON array; the batch layer expands it, so each normalizer sees one event object.

**Event Grid schema** (``id``, ``topic``, ``subject``, ``eventType``, ``eventTime``, ``data``,
``dataVersion``, ``metadataVersion``). **CloudEvents 1.0** (``specversion``, ``type``, ``source``, ``id``,
``time``, ``subject``, ``data``): ``type`` plays ``eventType``, ``source`` plays ``topic``, ``time`` plays
``eventTime``. Both map the same way (:func:`_build`):

============  ==========================================================================================
``id``        ``eg:`` + the event ``id``. CloudEvents only promise that ``source`` + ``id`` is unique (spec
              §3.1.1: different producers may reuse ids), so a CloudEvent's id is ``ce:`` + a hash of
              ``source`` and ``id`` (the original id stays in ``raw.id``).
``time``      ``eventTime`` / ``time``, UTC. CloudEvents make ``time`` optional; Vigil needs the occurrence
              time and will not invent one, so a CloudEvent without it is dead-lettered.
``action``    the event type lower-cased (``microsoft.keyvault.keynewversioncreated``).
``outcome``   ``data.status`` when it says ``Succeeded``/``Failed``/``Canceled``; otherwise the event
              type's suffix: ``...Success`` is a success, ``...Failure`` and ``...Cancel`` are failures;
              anything else is unknown.
``resource``  resource events (``Microsoft.Resources.*``) name their target in ``data.resourceUri``;
              every other publisher's target is the ``topic``/``source`` (the vault, the storage
              account), parsed as an ARM id (lower-cased).
``actor``     resource events carry the caller's token in ``data.claims``, the role evidence in
              ``data.authorization.evidence`` (``principalId``, ``principalType``) and the caller address
              in ``data.httpRequest.clientIpAddress``; ``data.tenantId`` fills the tenant when the claims
              lack it. ``claims`` and ``httpRequest`` are read as objects or as JSON text.
``labels``    ``subject`` (when not empty); for Key Vault events ``object_type``, ``object_name``,
              ``object_version`` and ``vault_name`` from the PascalCase ``data`` (``ObjectType`` ...).
``raw``       the event object, untouched.
============  ==========================================================================================

**Protocol messages are not events.** ``Microsoft.EventGrid.SubscriptionValidationEvent`` becomes
``Control(kind="eventgrid.validation")`` whose ``details`` hold ``validation_code`` (what the endpoint
echoes as ``{"validationResponse": ...}``), ``validation_url`` (for manual validation; absent on old API
versions) and ``topic`` (which the endpoint must check against its allow-list before answering). A
validation event without ``data.validationCode`` cannot be answered and is dead-lettered.
``Microsoft.EventGrid.SubscriptionDeletedEvent`` becomes ``Control(kind="eventgrid.deletion")`` with
``topic``, ``subject`` and ``event_subscription_id``. The same types arriving as CloudEvents are handled the
same way (CloudEvents-schema subscriptions validate with the HTTP ``OPTIONS`` handshake instead, so they
normally never appear). Control ids follow the same rules as event ids.

Detection: the Event Grid schema is ``eventType`` (a string) with ``eventTime`` or ``topic`` and no
``specversion``; CloudEvents is the presence of ``specversion`` (whatever its value, so that a 0.3 event is
refused with a reason rather than left unrecognised). No other format Vigil reads has these top-level keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from vigil.errors import NormalizeError
from vigil.events.arm import parse_resource_id
from vigil.events.fields import (
    actor_from_claims,
    hash_id,
    json_in_string,
    not_a_string,
    outcome_from_result,
    parse_time,
    require_str,
    strip_port,
    text,
)
from vigil.events.model import NO_RESOURCE, Actor, Control, Event, Outcome, freeze
from vigil.events.normalize import Normalizer

VALIDATION_EVENT: Final = "microsoft.eventgrid.subscriptionvalidationevent"
DELETION_EVENT: Final = "microsoft.eventgrid.subscriptiondeletedevent"
RESOURCE_EVENT_PREFIX: Final = "microsoft.resources."
KEYVAULT_EVENT_PREFIX: Final = "microsoft.keyvault."

#: Key Vault ``data`` fields (PascalCase) copied into labels
_KEYVAULT_LABELS: Final = (
    ("ObjectType", "object_type"),
    ("ObjectName", "object_name"),
    ("Version", "object_version"),
    ("VaultName", "vault_name"),
)
_CANCELLED: Final = frozenset({"canceled", "cancelled"})
_NO_DICT: Final[dict[str, Any]] = {}


class EventGridNormalizer(Normalizer):
    """One event of an Event Grid schema delivery (the batch layer expands the delivery array)."""

    name = "eventgrid"
    kind = "eventgrid"
    summary = "Azure Event Grid webhook deliveries (Event Grid schema), including the validation handshake"
    priority = 40

    def detect(self, record: Mapping[str, Any]) -> bool:
        return (
            type(record.get("eventType")) is str
            and ("eventTime" in record or "topic" in record)
            and "specversion" not in record
        )

    def normalize(self, record: dict[str, Any]) -> Event | Control:
        event_type = require_str(record, "eventType")
        event_id = _event_id(record)
        return _build(
            record,
            event_type=event_type,
            event_id="eg:" + event_id,
            topic=record.get("topic"),
            raw_time=record.get("eventTime"),
            time_field="eventTime",
        )


class CloudEventNormalizer(Normalizer):
    """One CloudEvents 1.0 event in structured JSON mode (batches arrive as arrays and are expanded)."""

    name = "cloudevents"
    kind = "eventgrid"
    summary = "CloudEvents 1.0 (structured JSON) deliveries from Azure Event Grid"
    priority = 41

    def detect(self, record: Mapping[str, Any]) -> bool:
        return "specversion" in record

    def normalize(self, record: dict[str, Any]) -> Event | Control:
        version = record.get("specversion")
        if version != "1.0":
            raise NormalizeError(f"specversion: {version!r} is not supported (only CloudEvents '1.0')")
        event_type = require_str(record, "type")
        event_id = _event_id(record)
        source = record.get("source")
        if type(source) is not str or not source:
            raise NormalizeError(not_a_string("source", source))
        return _build(
            record,
            event_type=event_type,
            event_id=hash_id("ce:", f"{source}\x1f{event_id}"),
            topic=source,
            raw_time=record.get("time"),
            time_field="time",
        )


def _build(
    record: dict[str, Any],
    *,
    event_type: str,
    event_id: str,
    topic: Any,
    raw_time: Any,
    time_field: str,
) -> Event | Control:
    """The mapping shared by both schemas (see the module docstring)."""
    action = event_type.lower()
    data = record.get("data")
    if type(data) is not dict:
        data = _NO_DICT
    topic = topic if type(topic) is str and topic else None
    subject = record.get("subject")
    subject = subject if type(subject) is str and subject else None

    if action == VALIDATION_EVENT:
        return _validation(event_id, data, topic)
    if action == DELETION_EVENT:
        sub_id = data.get("eventSubscriptionId")
        details = {
            "topic": topic,
            "subject": subject,
            "event_subscription_id": sub_id if type(sub_id) is str and sub_id else None,
        }
        return Control(kind="eventgrid.deletion", id=event_id, details=_present(details))

    when = parse_time(raw_time, time_field)
    if action.startswith(RESOURCE_EVENT_PREFIX):
        uri = data.get("resourceUri")
        target = uri if type(uri) is str and uri else (subject or topic)
    else:
        target = topic
    resource = parse_resource_id(target) if target else NO_RESOURCE

    labels: dict[str, str] = {}
    if subject is not None:
        labels["subject"] = subject
    if action.startswith(KEYVAULT_EVENT_PREFIX):
        for src, dst in _KEYVAULT_LABELS:
            value = text(data.get(src))
            if value is not None:
                labels[dst] = value

    return Event(
        id=event_id,
        time=when,
        kind="eventgrid",
        action=action,
        outcome=_outcome(action, data.get("status")),
        actor=_actor(data),
        resource=resource,
        labels=freeze(labels),
        raw=freeze(record),
    )


def _validation(event_id: str, data: dict[str, Any], topic: str | None) -> Control:
    code = data.get("validationCode")
    if type(code) is not str or not code:
        raise NormalizeError(
            "data.validationCode: "
            + ("missing" if code is None else f"expected a non-empty string, got {type(code).__name__}")
            + " in a subscription validation event (it cannot be answered)"
        )
    url = data.get("validationUrl")
    details = {
        "validation_code": code,
        "validation_url": url if type(url) is str and url else None,
        "topic": topic,
    }
    return Control(kind="eventgrid.validation", id=event_id, details=_present(details))


def _present(details: dict[str, str | None]) -> Mapping[str, Any]:
    """Control details without the absent (``None``) values."""
    return freeze({k: v for k, v in details.items() if v is not None})


def _outcome(action: str, status: Any) -> Outcome:
    """``data.status`` when it is decisive, then the event type's ``Success``/``Failure``/``Cancel`` end."""
    if type(status) is str and status:
        outcome = outcome_from_result(status)
        if outcome != "unknown":
            return outcome
        if status.lower() in _CANCELLED:
            return "failure"
    if action.endswith("success"):
        return "success"
    if action.endswith(("failure", "cancel")):
        return "failure"
    return "unknown"


def _actor(data: dict[str, Any]) -> Actor:
    """Caller identity of a resource event; the tenant falls back to ``data.tenantId``."""
    claims = _object_or_json(data.get("claims"))
    authz = data.get("authorization")
    principal_id = principal_type = None
    if type(authz) is dict:
        evidence = authz.get("evidence")
        if type(evidence) is dict:
            pid, ptype = evidence.get("principalId"), evidence.get("principalType")
            principal_id = pid if type(pid) is str and pid else None
            principal_type = ptype if type(ptype) is str and ptype else None
    http = _object_or_json(data.get("httpRequest"))
    ip = strip_port(http.get("clientIpAddress")) if http else None
    actor = actor_from_claims(claims, ip=ip, principal_id=principal_id, principal_type=principal_type)
    tenant = data.get("tenantId")
    if actor.tenant is None and type(tenant) is str and tenant:
        actor = msgspec.structs.replace(actor, tenant=tenant)
    return actor


def _object_or_json(value: Any) -> dict[str, Any] | None:
    """An object, or JSON text holding one; anything else (including broken JSON) is ``None``.

    Identity details are optional: a malformed one costs the event its actor, never the event itself
    (``raw`` keeps what was sent).
    """
    if type(value) is dict:
        return value
    if type(value) is str:
        try:
            decoded = json_in_string(value, "claims")
        except NormalizeError:
            return None
        return decoded if type(decoded) is dict else None
    return None


def _event_id(record: Mapping[str, Any]) -> str:
    value = record.get("id")
    if type(value) is str and value:
        return value
    if type(value) is int:
        return str(value)
    raise NormalizeError(not_a_string("id", value) + " (the event id is the idempotency key)")

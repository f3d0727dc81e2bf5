"""Key Vault ``AuditEvent`` resource logs (data-plane audit) — reference/azure.md §1.1 and §1.3.

Traps handled:

* **``resultType`` lies.** Failed calls are seen with ``resultType: "Success"`` while the HTTP status
  says 403, so the outcome comes from ``properties.httpStatusCode`` first (a number, or a numeric string),
  then from ``resultSignature`` (the HTTP status *name*: ``OK`` is a success; ``Unauthorized``, ``Forbidden``,
  ``NotFound``, ``TooManyRequests`` ... are failures). ``resultType`` is consulted only when both are absent,
  and then only believed when it reports a failure: a lone ``Success`` is ``unknown``, because that is exactly
  the spelling failed calls carry.
* **``identity.claim`` is singular** (the Activity Log says ``claims``). The claims go through the shared
  :func:`~vigil.events.fields.actor_from_claims`, so the object id comes from ``oid`` or its long URI form
  and a managed identity (the training VM) is recognised by ``xms_mirid``. ``identity.claims`` is accepted
  as a fallback, because a re-shaped export could use the Activity Log spelling.
* **Upper-case ids.** ``resourceId`` arrives as ``/SUBSCRIPTIONS/.../VAULTS/KV-...``; it is lower-cased and
  parsed by :func:`~vigil.events.arm.parse_resource_id`. ``operationName`` (``SecretGet``, ``KeyRelease``)
  becomes the lower-cased ``action`` (``secretget``, ``keyrelease``).
* **``durationMs`` as a string** and ``correlationId`` as ``""`` are left alone in ``raw``; an empty
  correlation id is simply an empty part of the event id's key.

Records carry no id of their own (``correlationId`` is optional and client-supplied), so the event id hashes
the fields that identify one call: time, vault, operation, correlation id, object id and request URI, caller
IP and result signature (the vault id lower-cased). Re-delivery of the same record gives the same id; key
order and the case of ``resourceId`` do not matter.

Detection is ``category == "AuditEvent"`` (any case) with an ``operationName``. Records that also carry
``properties.eventCategory`` belong to the Activity Log normalizer, which treats that field as authoritative,
so they are refused here to keep detection exclusive. Optional parts of the wrong shape (``identity`` or
``properties`` not an object) are ignored rather than dead-lettered: the event is still worth having and
``raw`` keeps them; the required fields (``time``, ``resourceId``, ``operationName``) are checked precisely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vigil.events.arm import parse_resource_id
from vigil.events.fields import (
    actor_from_claims,
    hash_id,
    outcome_from_http,
    parse_time,
    require_str,
    strip_port,
)
from vigil.events.model import Event, Outcome, freeze
from vigil.events.normalize import Normalizer

#: ``resultSignature`` values (.NET ``HttpStatusCode`` names, lower-cased) and what they mean
SIGNATURE_OUTCOMES: Final[dict[str, Outcome]] = {
    "ok": "success",
    "created": "success",
    "accepted": "success",
    "nocontent": "success",
    "partialcontent": "success",
    "notmodified": "success",
    "badrequest": "failure",
    "unauthorized": "failure",
    "forbidden": "failure",
    "notfound": "failure",
    "methodnotallowed": "failure",
    "conflict": "failure",
    "gone": "failure",
    "preconditionfailed": "failure",
    "requestentitytoolarge": "failure",
    "unsupportedmediatype": "failure",
    "toomanyrequests": "failure",
    "internalservererror": "failure",
    "notimplemented": "failure",
    "badgateway": "failure",
    "serviceunavailable": "failure",
    "gatewaytimeout": "failure",
}

_FAILED_RESULT_TYPES: Final = frozenset({"failure", "failed", "error"})
_NO_DICT: Final[dict[str, Any]] = {}


class KeyVaultAuditNormalizer(Normalizer):
    """Key Vault ``AuditEvent`` record (``{"records": [...]}`` envelopes are expanded before it gets here)."""

    name = "keyvault"
    kind = "azure.keyvault"
    summary = "Azure Key Vault AuditEvent resource logs (Event Hubs / diagnostic settings form)"
    priority = 20

    def detect(self, record: Mapping[str, Any]) -> bool:
        category = record.get("category")
        if type(category) is not str or "operationName" not in record:
            return False
        if category != "AuditEvent" and category.lower() != "auditevent":
            return False
        props = record.get("properties")
        return not (type(props) is dict and "eventCategory" in props)

    def normalize(self, record: dict[str, Any]) -> Event:
        raw_time = record.get("time")
        when = parse_time(raw_time, "time")
        resource_id = require_str(record, "resourceId")
        op = require_str(record, "operationName")
        props = record.get("properties")
        if type(props) is not dict:
            props = _NO_DICT
        signature = record.get("resultSignature")
        outcome = outcome_from_http(props.get("httpStatusCode"))
        if outcome is None:
            outcome = _signature_outcome(signature, record.get("resultType"))
        identity = record.get("identity")
        claims = None
        if type(identity) is dict:
            claims = identity.get("claim")
            if claims is None:
                claims = identity.get("claims")
        caller = record.get("callerIpAddress")
        resource = parse_resource_id(resource_id)
        action = op.lower()
        return Event(
            id=hash_id(
                "kv:",
                f"{raw_time}\x1f{resource.id}\x1f{action}\x1f{record.get('correlationId')}"
                f"\x1f{props.get('id')}\x1f{props.get('requestUri')}\x1f{caller}\x1f{signature}",
                when,
            ),
            time=when,
            kind="azure.keyvault",
            action=action,
            outcome=outcome,
            actor=actor_from_claims(claims, ip=strip_port(caller)),
            resource=resource,
            raw=freeze(record),
        )


def _signature_outcome(signature: Any, result_type: Any) -> Outcome:
    """Outcome without ``httpStatusCode``: the status name, a numeric signature, then a failed result."""
    if type(signature) is str and signature:
        known = SIGNATURE_OUTCOMES.get(signature.lower())
        if known is not None:
            return known
        by_number = outcome_from_http(signature)
        if by_number is not None:
            return by_number
    elif type(signature) is int:
        by_number = outcome_from_http(signature)
        if by_number is not None:
            return by_number
    if type(result_type) is str and result_type.lower() in _FAILED_RESULT_TYPES:
        return "failure"
    return "unknown"

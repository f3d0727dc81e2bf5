"""Azure Activity Log records in their streamed (diagnostic-settings) form — reference/azure.md §1.1–§1.2.

Traps handled: ``resourceId``/``operationName`` upper-cased (compared and keyed in lower case), the claims
under ``identity.claims`` (plural, unlike Key Vault), claim values that are strings even when numeric,
``durationMs`` as a number or a string (left in ``raw`` untouched), ``level`` spelled ``Information`` or
``Informational``, and both spellings of ``resultType`` (``Success``/``Succeeded``, ``Failure``/``Failed``).

Streamed records carry no id of their own (``correlationId`` is shared by the begin and end records of one
ARM operation), so the event id hashes the fields that identify one record: correlation id, operation,
result type and signature, time and resource.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.arm import parse_resource_id
from vigil.events.fields import actor_from_claims, hash_id, outcome_from_result, parse_time, strip_port
from vigil.events.model import Event, Severity, freeze
from vigil.events.normalize import Normalizer

#: ``category`` values of the Activity Log (Administrative events use Write/Delete/Action), lower-cased
ACTIVITY_CATEGORIES: Final = frozenset(
    {
        "administrative",
        "write",
        "delete",
        "action",
        "servicehealth",
        "resourcehealth",
        "alert",
        "autoscale",
        "recommendation",
        "security",
        "policy",
    }
)

LEVEL_SEVERITY: Final[dict[str, Severity]] = {
    "critical": "high",
    "error": "medium",
    "warning": "low",
    "information": "informational",
    "informational": "informational",
    "verbose": "informational",
}


class ActivityLogNormalizer(Normalizer):
    """Activity Log record (``{"records": [...]}`` envelopes are expanded before this sees a record)."""

    name = "activity"
    kind = "azure.activity"
    summary = "Azure Activity Log records (Event Hubs / diagnostic settings form)"
    priority = 10

    def detect(self, record: Mapping[str, Any]) -> bool:
        if "operationName" not in record or "resourceId" not in record:
            return False
        category = record.get("category")
        if isinstance(category, str) and category.lower() in ACTIVITY_CATEGORIES:
            return True
        props = record.get("properties")
        return isinstance(props, dict) and "eventCategory" in props

    def normalize(self, record: dict[str, Any]) -> Event:
        resource_id = record.get("resourceId")
        if not isinstance(resource_id, str) or not resource_id:
            raise NormalizeError("resourceId: missing or not a string")
        op = record.get("operationName")
        if isinstance(op, dict):  # REST form {"value": ..., "localizedValue": ...}
            op = op.get("value")
        if not isinstance(op, str) or not op:
            raise NormalizeError("operationName: missing or not a string")
        raw_time = record.get("time")
        when = parse_time(raw_time, "time")
        resource = parse_resource_id(resource_id)
        action = op.lower()
        result_type = record.get("resultType")

        identity = record.get("identity")
        claims: Any = None
        principal_id = principal_type = None
        if isinstance(identity, dict):
            claims = identity.get("claims")
            authz = identity.get("authorization")
            if isinstance(authz, dict):
                evidence = authz.get("evidence")
                if isinstance(evidence, dict):
                    principal_id = evidence.get("principalId")
                    principal_type = evidence.get("principalType")
        actor = actor_from_claims(
            claims,
            ip=strip_port(record.get("callerIpAddress")),
            principal_id=principal_id if isinstance(principal_id, str) else None,
            principal_type=principal_type if isinstance(principal_type, str) else None,
        )
        level = record.get("level")
        severity = LEVEL_SEVERITY.get(level.lower()) if isinstance(level, str) else None
        event_id = hash_id(
            "act:",
            f"{record.get('correlationId')}\x1f{action}\x1f{result_type}\x1f{record.get('resultSignature')}"
            f"\x1f{raw_time}\x1f{resource.id}",
        )
        return Event(
            id=event_id,
            time=when,
            kind="azure.activity",
            action=action,
            outcome=outcome_from_result(result_type),
            severity=severity,
            actor=actor,
            resource=resource,
            raw=freeze(record),
        )

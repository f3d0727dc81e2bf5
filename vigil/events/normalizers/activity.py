"""Azure Activity Log records in their streamed (diagnostic-settings) form — reference/azure.md §1.1–§1.2.

Traps handled: ``resourceId``/``operationName`` upper-cased (compared and keyed in lower case), the claims
under ``identity.claims`` (plural, unlike Key Vault), claim values that are strings even when numeric,
``durationMs`` as a number or a string (left in ``raw`` untouched), ``level`` spelled ``Information`` or
``Informational`` (mapped to ``severity``), and both spellings of ``resultType`` (``Success``/``Succeeded``,
``Failure``/``Failed``; ``Start``/``Accept`` are ``unknown`` until the terminal record arrives).

Streamed records carry no id of their own (``correlationId`` is shared by the begin and end records of one
ARM operation), so the event id hashes the fields that identify one record: correlation id, operation,
result type and signature, time and resource.

The Activity Log is the highest-volume source, so it has a second entry point, :meth:`from_json`, that
decodes a record straight from its JSON bytes into a typed struct (msgspec skips the fields it does not
need, in C) and keeps the bytes as the lazily decoded ``raw``. Both entry points build the event in
:func:`_event`, so they cannot drift apart; anything unusual makes ``from_json`` return ``None`` and the
dict path decides, with its precise error messages.

``from_json`` itself first tries the compiled version of that path (``vigil/events/_activity.c``: one call
that scans the bytes and builds the event with the same helpers, about a third of the typed path's cost);
the typed path below stays the reference it is tested against and runs whenever the compiled one declines
(an envelope, escaped or duplicate keys, anything unusual), is not built, or ``VIGIL_PURE_PYTHON`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from vigil.errors import NormalizeError
from vigil.events.arm import RESOURCE_CACHE, parse_resource_id
from vigil.events.fields import (
    CLAIM_NAME,
    CLAIM_OID,
    CLAIM_TENANT,
    CLAIM_UPN,
    RESULT_OUTCOMES_EXACT,
    actor_from_claims,
    actor_from_parts,
    hash_id,
    outcome_from_result,
    parse_time,
    strip_port,
    time_id,
    to_ms,
)
from vigil.events.model import NO_ACTOR, Actor, Event, FrozenMap, Severity, freeze
from vigil.events.normalize import FastResult, Normalizer
from vigil.runtime import PURE_PYTHON

try:
    from vigil.events import _activity
except ImportError:  # built without a C compiler: the typed path runs alone
    _activity = None  # type: ignore[assignment]
if PURE_PYTHON:
    _activity = None  # type: ignore[assignment]

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
_LEVEL_SEVERITY_EXACT: Final = {**LEVEL_SEVERITY, **{k.title(): v for k, v in LEVEL_SEVERITY.items()}}


def _severity(level: Any) -> Severity | None:
    if type(level) is not str:
        return None
    return _LEVEL_SEVERITY_EXACT.get(level) or LEVEL_SEVERITY.get(level.lower())


class ActivityLogNormalizer(Normalizer):
    """Activity Log record (``{"records": [...]}`` envelopes are expanded before this sees a record)."""

    name = "activity"
    kind = "azure.activity"
    summary = "Azure Activity Log records (Event Hubs / diagnostic settings form)"
    priority = 10
    has_fast_path = True

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
        return _event(
            record.get("time"),
            resource_id,
            op,
            record.get("resultType"),
            record.get("resultSignature"),
            record.get("correlationId"),
            record.get("level"),
            actor_from_claims(
                claims,
                ip=strip_port(record.get("callerIpAddress")),
                principal_id=principal_id if isinstance(principal_id, str) else None,
                principal_type=principal_type if isinstance(principal_type, str) else None,
            ),
            freeze(record),
        )

    def from_json(self, data: bytes | msgspec.Raw) -> FastResult:
        if _native is not None:
            event = _native(data)
            if event is not None:
                return event
        return self.from_json_typed(data)

    def from_json_typed(self, data: bytes | msgspec.Raw) -> FastResult:
        """The fast path in Python: what the compiled one must agree with wherever it answers."""
        try:
            rec = _decode(data)
        except (msgspec.DecodeError, ValueError, RecursionError):  # bad JSON, UTF-8, types: dicts decide
            return None
        if rec.records is not None:
            return rec.records
        if rec.resourceId is None or rec.operationName is None or rec.time is None:
            return None
        category = rec.category
        if not (
            (category is not None and category.lower() in ACTIVITY_CATEGORIES)
            or (rec.properties is not None and rec.properties.eventCategory is not None)
        ):
            return None
        principal_id = principal_type = None
        c = _NO_CLAIMS
        identity = rec.identity
        if identity is not None:
            if identity.claims is not None:
                c = identity.claims
            authz = identity.authorization
            if authz is not None and authz.evidence is not None:
                principal_id = authz.evidence.principalId
                principal_type = authz.evidence.principalType
        ip = rec.callerIpAddress or None
        if ip is not None and ":" in ip:  # a port or IPv6: the common IPv4 case skips the call
            ip = strip_port(ip)
        actor = actor_from_parts(
            oid=c.oid_uri or c.oid or principal_id,
            name=c.upn_uri or c.upn or c.unique_name or c.name or c.name_uri,
            app_id=c.appid or c.azp,
            tenant=c.tid_uri or c.tid,
            ip=ip or c.ipaddr,
            managed_identity=bool(c.xms_mirid),
            principal_type=principal_type,
        )
        try:
            return _event(
                rec.time,
                rec.resourceId,
                rec.operationName,
                rec.resultType,
                rec.resultSignature,
                rec.correlationId,
                rec.level,
                actor,
                FrozenMap(None, data),
            )
        except NormalizeError:
            return None


def _event(
    raw_time: Any,
    resource_id: str,
    op: str,
    result_type: Any,
    result_signature: Any,
    correlation_id: Any,
    level: Any,
    actor: Actor,
    raw: Mapping[str, Any],
) -> Event:
    when = parse_time(raw_time, "time")
    resource = parse_resource_id(resource_id)
    action = op.lower()
    return Event(
        id=hash_id(
            "act:",
            f"{correlation_id}\x1f{action}\x1f{result_type}\x1f{result_signature}\x1f{raw_time}\x1f{resource.id}",
            when,
        ),
        time=when,
        kind="azure.activity",
        action=action,
        outcome=outcome_from_result(result_type),
        severity=_severity(level),
        actor=actor,
        resource=resource,
        raw=raw,
    )


# -- typed decoding for the fast path: only the fields the event needs; msgspec skips the rest in C --------


class _Claims(msgspec.Struct, gc=False):
    oid_uri: str | None = msgspec.field(default=None, name=CLAIM_OID)
    oid: str | None = None
    upn_uri: str | None = msgspec.field(default=None, name=CLAIM_UPN)
    upn: str | None = None
    unique_name: str | None = None
    name: str | None = None
    name_uri: str | None = msgspec.field(default=None, name=CLAIM_NAME)
    appid: str | None = None
    azp: str | None = None
    tid_uri: str | None = msgspec.field(default=None, name=CLAIM_TENANT)
    tid: str | None = None
    ipaddr: str | None = None
    xms_mirid: str | None = None


class _Evidence(msgspec.Struct, gc=False):
    principalId: str | None = None  # noqa: N815 - the source's field name
    principalType: str | None = None  # noqa: N815


class _Authorization(msgspec.Struct, gc=False):
    evidence: _Evidence | None = None


class _Identity(msgspec.Struct, gc=False):
    claims: _Claims | None = None
    authorization: _Authorization | None = None


class _Properties(msgspec.Struct, gc=False):
    eventCategory: str | None = None  # noqa: N815


class _Record(msgspec.Struct, gc=False):
    records: list[msgspec.Raw] | None = None
    time: str | None = None
    resourceId: str | None = None  # noqa: N815
    operationName: str | None = None  # noqa: N815
    category: str | None = None
    resultType: str | None = None  # noqa: N815
    resultSignature: str | None = None  # noqa: N815
    correlationId: str | None = None  # noqa: N815
    callerIpAddress: str | None = None  # noqa: N815
    level: str | None = None
    identity: _Identity | None = None
    properties: _Properties | None = None


_decode: Final = msgspec.json.Decoder(_Record).decode
_NO_CLAIMS: Final = _Claims()

if _activity is not None:
    _activity.configure(
        event=Event,
        actor=Actor,
        frozen_map=FrozenMap,
        no_actor=NO_ACTOR,
        categories=ACTIVITY_CATEGORIES,
        normalize_error=NormalizeError,
        parse_time=parse_time,
        parse_resource_id=parse_resource_id,
        time_id=time_id,
        to_ms=to_ms,
        outcome=outcome_from_result,
        severity=_severity,
        strip_port=strip_port,
        resource_cache=RESOURCE_CACHE,
        outcomes=RESULT_OUTCOMES_EXACT,
        severities=_LEVEL_SEVERITY_EXACT,
    )
#: the compiled fast path (``_activity.c``), or None where it is not built or not wanted
_native: Final = _activity.normalize if _activity is not None else None

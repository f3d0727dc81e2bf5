"""Microsoft Sentinel alerts and incidents — reference/azure.md §2.1-§2.2.

Two formats live here, because they share the entity model and the traps.

``sentinel-alert`` (:class:`SecurityAlertNormalizer`, kind ``sentinel.alert``): one row of the
``SecurityAlert`` table, from a Log Analytics query (§5.4) or from a workspace data export to Event Hubs
(hub ``am-SecurityAlert``, ``{"records": [row, ...]}``; the envelope is expanded before a row gets here).

Traps handled:

* ``Entities``, ``ExtendedProperties``, ``Techniques``, ``SubTechniques``, ``ExtendedLinks`` and
  ``RemediationSteps`` are JSON *text*. They are decoded; text that is not JSON is a
  :class:`~vigil.errors.NormalizeError` naming the column (a row whose entities cannot be read must not pass
  as a row without entities). ``Entities`` must decode to an array and ``ExtendedProperties`` to an object.
* Entities use Json.NET reference preservation: an object carries ``"$id"`` and a later occurrence of the same
  object is ``{"$ref": "<id>"}``, at the top level or nested (a process entity's ``Host``). References are
  resolved into copies; a reference to an object that is being expanded (a cycle) or to an unknown id stays as
  it is, and the expansion is capped (:data:`MAX_ENTITY_NODES`) so that crafted references cannot blow up.
* ``Tactics`` is a comma-separated string, not JSON.
* The same alert is written again when its status changes (Defender alerts moving to ``Resolved``), so
  ``SystemAlertId`` alone does not identify a *record*. The event id is ``sa:<SystemAlertId>:<status>``
  (both lower-cased, status without blanks; ``sa:<SystemAlertId>`` when the row has no ``Status``):
  re-delivery of the same row gives the same id, a status change is a new event. The bare ``SystemAlertId``
  is in ``labels["sentinel.alert_id"]`` for joins with incidents.
* ``action`` is ``alert.<status>`` (``alert.new``, ``alert.inprogress``, ``alert.resolved``,
  ``alert.dismissed``; plain ``alert`` without a status), so a rule can act on new alerts only
  (``action == "alert.new"``) and not fire again when the alert is closed. The alert's name is in
  ``labels["sentinel.alert_name"]``.
* ``raw`` of a ``sentinel.alert`` event is a copy of the row whose JSON-text columns are replaced by their
  decoded values (``Entities`` with references resolved), so rules reach ``raw.Entities`` or
  ``raw.ExtendedProperties["Analytic Rule Name"]`` directly. The source row itself is left untouched.
* ``actor`` comes from the first ``account`` entity (``AadUserId``, ``Name@UPNSuffix``, ``AadTenantId``)
  and the first ``ip`` entity (``Address``). ``resource`` is the ``ResourceId`` column when it is set (the
  alerting product's own statement of the affected resource), else the first ``azure-resource`` entity's
  ``ResourceId``, else the first ``host`` entity's ``AzureID``. Scheduled-rule alerts usually have an empty
  ``ResourceId``.

``sentinel-incident`` (:class:`SentinelIncidentNormalizer`, kind ``sentinel.incident``) accepts two shapes:

* The incident-trigger body an automation rule hands to a playbook (Logic App) that forwards it
  (top-level ``eventUniqueId``, ``objectSchemaType: "Incident"``, ``objectEventType``, ``workspaceInfo``,
  ``object`` = the ARM incident with ``properties.alerts[]`` and ``properties.relatedEntities[]``). The id is
  ``si:<eventUniqueId>``; ``action`` is ``incident.<objectEventType>`` (``incident.create``,
  ``incident.update``); ``time`` is ``lastModifiedTimeUtc``, else ``createdTimeUtc``. Related entities use
  ``kind`` and camel-cased ``properties`` (``Account``/``aadUserId``, ``Ip``/``address``,
  ``AzureResource``/``resourceId``) and give ``actor`` and ``resource`` the same way as for alerts.
* A ``SecurityIncident`` table row (one row per incident *update*): ``IncidentName`` + ``IncidentNumber``.
  Its dynamic columns (``Owner``, ``AlertIds``, ``Labels``, ``AdditionalData`` ...) may arrive as JSON text
  and are decoded into ``raw`` like the alert columns. The id hashes ``IncidentName`` and
  ``LastModifiedTime``; ``time`` is ``LastModifiedTime`` (else ``TimeGenerated``). A row does not say whether
  it records a creation, so ``action`` is ``incident.create`` when ``LastModifiedTime`` equals
  ``CreatedTime`` and ``incident.update`` otherwise. Rows carry no entities: no actor, no resource.

``resource`` of an incident is the *affected* Azure resource (as for alerts), never the incident's own ARM id,
because remediations target ``resource.id``; the incident's id (GUID) and ARM id are labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.arm import parse_resource_id
from vigil.events.fields import json_in_string, json_type, parse_time, stable_id, text
from vigil.events.model import NO_ACTOR, NO_RESOURCE, Actor, Event, Resource, Severity, freeze
from vigil.events.normalize import Normalizer

#: SecurityAlert columns that hold JSON text
ALERT_JSON_COLUMNS: Final = (
    "Entities",
    "ExtendedProperties",
    "Techniques",
    "SubTechniques",
    "ExtendedLinks",
    "RemediationSteps",
)
#: SecurityIncident dynamic columns (JSON text in query results and exports)
INCIDENT_JSON_COLUMNS: Final = (
    "Owner",
    "AlertIds",
    "BookmarkIds",
    "Labels",
    "RelatedAnalyticRuleIds",
    "AdditionalData",
    "Comments",
    "Tasks",
)

SEVERITY: Final[dict[str, Severity]] = {
    "high": "high",
    "medium": "medium",
    "low": "low",
    "informational": "informational",
}

#: most containers one entity list may expand to while resolving ``$ref`` references
MAX_ENTITY_NODES: Final = 100_000


class SecurityAlertNormalizer(Normalizer):
    """One ``SecurityAlert`` row (query result or ``am-SecurityAlert`` data-export record)."""

    name = "sentinel-alert"
    kind = "sentinel.alert"
    summary = "Microsoft Sentinel SecurityAlert rows (Log Analytics query or data export)"
    priority = 30

    def detect(self, record: Mapping[str, Any]) -> bool:
        if "SystemAlertId" not in record:
            return False
        return (
            "AlertName" in record
            or "DisplayName" in record
            or "AlertSeverity" in record
            or record.get("Type") == "SecurityAlert"
        )

    def normalize(self, record: dict[str, Any]) -> Event:
        alert_id = record.get("SystemAlertId")
        if not isinstance(alert_id, str) or not alert_id.strip():
            raise NormalizeError("SystemAlertId: missing or not a string")
        alert_id = alert_id.strip()

        raw = dict(record)
        for column in ALERT_JSON_COLUMNS:
            if column in raw:
                raw[column] = json_in_string(raw[column], column)
        entities = raw.get("Entities")
        if entities is not None:
            if type(entities) is not list:
                raise NormalizeError(f"Entities: expected a JSON array, got {json_type(entities)}")
            entities = raw["Entities"] = resolve_refs(entities, "Entities")
        extended = raw.get("ExtendedProperties")
        if extended is not None and type(extended) is not dict:
            raise NormalizeError(f"ExtendedProperties: expected a JSON object, got {json_type(extended)}")

        generated = record.get("TimeGenerated")
        if generated is None or generated == "":
            start = record.get("StartTime")
            if start is None or start == "":
                raise NormalizeError("TimeGenerated: missing, and no StartTime to fall back on")
            when = _parse_time(start, "StartTime")
        else:
            when = _parse_time(generated, "TimeGenerated")

        status = _token(record.get("Status"))
        actor, entity_resource = actor_and_resource(_alert_entities(entities))
        column_resource = record.get("ResourceId")
        resource = (
            parse_resource_id(column_resource.strip())
            if isinstance(column_resource, str) and column_resource.strip()
            else entity_resource
        )
        severity = record.get("AlertSeverity")

        labels: dict[str, str] = {"sentinel.alert_id": alert_id}
        _put(labels, "sentinel.alert_name", record.get("AlertName") or record.get("DisplayName"))
        _put(labels, "sentinel.alert_type", record.get("AlertType"))
        _put(labels, "sentinel.status", record.get("Status"))
        _put(labels, "sentinel.product", record.get("ProductName"))
        _put(labels, "sentinel.provider", record.get("ProviderName"))
        _put(labels, "sentinel.compromised_entity", record.get("CompromisedEntity"))
        _put(labels, "sentinel.tactics", _join(record.get("Tactics")))
        _put(labels, "sentinel.techniques", _join(raw.get("Techniques")))
        if type(extended) is dict:
            _put(labels, "sentinel.rule_name", extended.get("Analytic Rule Name"))

        return Event(
            id=f"sa:{alert_id.lower()}:{status}" if status else f"sa:{alert_id.lower()}",
            time=when,
            kind="sentinel.alert",
            action=f"alert.{status}" if status else "alert",
            outcome="unknown",
            severity=SEVERITY.get(severity.lower()) if isinstance(severity, str) else None,
            actor=actor,
            resource=resource,
            labels=freeze(labels),
            raw=freeze(raw),
        )


class SentinelIncidentNormalizer(Normalizer):
    """Sentinel incident: automation-rule / playbook trigger body, or a ``SecurityIncident`` row."""

    name = "sentinel-incident"
    kind = "sentinel.incident"
    summary = "Microsoft Sentinel incidents (playbook incident-trigger body or SecurityIncident rows)"
    priority = 31

    def detect(self, record: Mapping[str, Any]) -> bool:
        if "eventUniqueId" in record:
            schema = record.get("objectSchemaType")
            return isinstance(schema, str) and schema.lower() == "incident"
        return "IncidentName" in record and "IncidentNumber" in record and "SystemAlertId" not in record

    def normalize(self, record: dict[str, Any]) -> Event:
        if "eventUniqueId" in record:
            return self._trigger(record)
        return self._row(record)

    # -- the playbook incident-trigger body ---------------------------------------------------------------

    def _trigger(self, record: dict[str, Any]) -> Event:
        unique_id = record.get("eventUniqueId")
        if not isinstance(unique_id, str) or not unique_id.strip():
            raise NormalizeError("eventUniqueId: missing or not a string")
        event_type = record.get("objectEventType")
        if not isinstance(event_type, str) or not event_type.strip():
            raise NormalizeError("objectEventType: missing or not a string")
        incident = record.get("object")
        if type(incident) is not dict:
            raise NormalizeError("object: missing or not an object")
        props = incident.get("properties")
        if type(props) is not dict:
            raise NormalizeError("object.properties: missing or not an object")

        modified = props.get("lastModifiedTimeUtc")
        if modified:
            when = _parse_time(modified, "object.properties.lastModifiedTimeUtc")
        else:
            created = props.get("createdTimeUtc")
            if not created:
                raise NormalizeError("object.properties.createdTimeUtc: missing, and no lastModifiedTimeUtc")
            when = _parse_time(created, "object.properties.createdTimeUtc")

        related = props.get("relatedEntities")
        if related is not None and type(related) is not list:
            raise NormalizeError(
                f"object.properties.relatedEntities: expected an array, got {json_type(related)}"
            )
        actor, resource = actor_and_resource(_incident_entities(related))

        labels: dict[str, str] = {}
        _put(labels, "sentinel.incident_id", incident.get("name"))
        _put(labels, "sentinel.incident_arm_id", incident.get("id"))
        _put(labels, "sentinel.incident_number", props.get("incidentNumber"))
        _put(labels, "sentinel.title", props.get("title"))
        _put(labels, "sentinel.status", props.get("status"))
        _put(labels, "sentinel.classification", props.get("classification"))
        alerts = props.get("alerts")
        if type(alerts) is list:
            _put(
                labels,
                "sentinel.alert_ids",
                _join(
                    [
                        a["properties"].get("systemAlertId")
                        for a in alerts
                        if type(a) is dict and type(a.get("properties")) is dict
                    ]
                ),
            )
        additional = props.get("additionalData")
        if type(additional) is dict:
            _put(labels, "sentinel.tactics", _join(additional.get("tactics")))
            _put(labels, "sentinel.techniques", _join(additional.get("techniques")))
            _put(labels, "sentinel.products", _join(additional.get("alertProductNames")))
        _put(labels, "sentinel.workspace_id", record.get("workspaceId"))
        workspace = record.get("workspaceInfo")
        if type(workspace) is dict:
            _put(labels, "sentinel.workspace", workspace.get("WorkspaceName"))

        severity = props.get("severity")
        return Event(
            id="si:" + unique_id.strip().lower(),
            time=when,
            kind="sentinel.incident",
            action="incident." + "".join(event_type.lower().split()),
            outcome="unknown",
            severity=SEVERITY.get(severity.lower()) if isinstance(severity, str) else None,
            actor=actor,
            resource=resource,
            labels=freeze(labels),
            raw=freeze(record),
        )

    # -- the SecurityIncident table row -------------------------------------------------------------------

    def _row(self, record: dict[str, Any]) -> Event:
        name = record.get("IncidentName")
        if not isinstance(name, str) or not name.strip():
            raise NormalizeError("IncidentName: missing or not a string")
        raw = dict(record)
        for column in INCIDENT_JSON_COLUMNS:
            if column in raw:
                raw[column] = json_in_string(raw[column], column)

        modified = record.get("LastModifiedTime")
        has_modified = modified is not None and modified != ""
        if not has_modified:
            generated = record.get("TimeGenerated")
            if generated is None or generated == "":
                raise NormalizeError("LastModifiedTime: missing, and no TimeGenerated to fall back on")
            when = _parse_time(generated, "TimeGenerated")
        else:
            when = _parse_time(modified, "LastModifiedTime")
        created = record.get("CreatedTime")
        is_create = has_modified and bool(created) and _parse_time(created, "CreatedTime") == when

        labels: dict[str, str] = {"sentinel.incident_id": name.strip()}
        _put(labels, "sentinel.incident_number", record.get("IncidentNumber"))
        _put(labels, "sentinel.title", record.get("Title"))
        _put(labels, "sentinel.status", record.get("Status"))
        _put(labels, "sentinel.classification", record.get("Classification"))
        _put(labels, "sentinel.alert_ids", _join(raw.get("AlertIds")))
        additional = raw.get("AdditionalData")
        if type(additional) is dict:
            _put(labels, "sentinel.tactics", _join(additional.get("tactics")))
            _put(labels, "sentinel.techniques", _join(additional.get("techniques")))
            _put(labels, "sentinel.products", _join(additional.get("alertProductNames")))

        severity = record.get("Severity")
        return Event(
            id=stable_id("si:", name.strip().lower(), when.isoformat()),
            time=when,
            kind="sentinel.incident",
            action="incident.create" if is_create else "incident.update",
            outcome="unknown",
            severity=SEVERITY.get(severity.lower()) if isinstance(severity, str) else None,
            labels=freeze(labels),
            raw=freeze(raw),
        )


# -- entities ---------------------------------------------------------------------------------------------


def resolve_refs(entities: list[Any], field: str) -> list[Any]:
    """Resolve Json.NET ``{"$ref": id}`` references against the objects carrying ``"$id"``.

    Returns new containers (the input is not changed). References to unknown ids and references that would
    form a cycle are kept as they are; more than :data:`MAX_ENTITY_NODES` containers is an error naming
    ``field``.
    """
    index: dict[str, dict[str, Any]] = {}
    _index_ids(entities, index)
    budget = [MAX_ENTITY_NODES]
    return [_expand(e, index, set(), budget, field) for e in entities]


def _index_ids(node: Any, index: dict[str, dict[str, Any]]) -> None:
    if type(node) is dict:
        ident = node.get("$id")
        if ident is not None and "$ref" not in node:
            index.setdefault(str(ident), node)
        for value in node.values():
            if type(value) is dict or type(value) is list:
                _index_ids(value, index)
    elif type(node) is list:
        for value in node:
            if type(value) is dict or type(value) is list:
                _index_ids(value, index)


def _expand(
    node: Any, index: dict[str, dict[str, Any]], active: set[str], budget: list[int], field: str
) -> Any:
    if type(node) is dict:
        ref = node.get("$ref")
        if ref is not None:
            target = index.get(str(ref))
            if target is None or str(ref) in active:
                return node
            node = target
        budget[0] -= 1
        if budget[0] < 0:
            raise NormalizeError(f"{field}: $ref expansion exceeds {MAX_ENTITY_NODES} objects")
        ident = node.get("$id")
        key = str(ident) if ident is not None else None
        if key is not None:
            active.add(key)
        out = {k: _expand(v, index, active, budget, field) for k, v in node.items()}
        if key is not None:
            active.discard(key)
        return out
    if type(node) is list:
        budget[0] -= 1
        if budget[0] < 0:
            raise NormalizeError(f"{field}: $ref expansion exceeds {MAX_ENTITY_NODES} objects")
        return [_expand(v, index, active, budget, field) for v in node]
    return node


def _alert_entities(entities: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """SecurityAlert entities: ``{"Type": "account", "Name": ...}`` (properties at the top level)."""
    if type(entities) is not list:
        return
    for entity in entities:
        if type(entity) is dict:
            etype = entity.get("Type")
            if isinstance(etype, str):
                yield etype.lower().replace("-", ""), entity


def _incident_entities(entities: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Incident related entities: ``{"kind": "Account", "properties": {"accountName": ...}}``."""
    if type(entities) is not list:
        return
    for entity in entities:
        if type(entity) is dict:
            kind = entity.get("kind")
            props = entity.get("properties")
            if isinstance(kind, str) and type(props) is dict:
                yield kind.lower().replace("-", ""), props


def actor_and_resource(entities: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[Actor, Resource]:
    """The first account and ip entities make the actor; the first Azure resource (or host) the resource.

    Entity types are lower-cased without dashes (``azure-resource`` and ``AzureResource`` are the same);
    property names are read in both the alert (``AadUserId``) and the incident (``aadUserId``) spelling.
    """
    account: Mapping[str, Any] | None = None
    ip: str | None = None
    resource_id: str | None = None
    host_id: str | None = None
    for etype, props in entities:
        if etype == "account":
            if account is None:
                account = props
        elif etype == "ip":
            if ip is None:
                ip = text(_prop(props, "Address", "address"))
        elif etype == "azureresource":
            if resource_id is None:
                resource_id = text(_prop(props, "ResourceId", "resourceId"))
        elif etype == "host" and host_id is None:
            host_id = text(_prop(props, "AzureID", "azureID"))

    actor = NO_ACTOR
    if account is not None or ip is not None:
        user_id = tenant = name = None
        if account is not None:
            user_id = text(_prop(account, "AadUserId", "aadUserId"))
            tenant = text(_prop(account, "AadTenantId", "aadTenantId"))
            name = text(_prop(account, "Name", "accountName"))
            suffix = text(_prop(account, "UPNSuffix", "upnSuffix"))
            if name and suffix and "@" not in name:
                name = f"{name}@{suffix}"
            if not name:
                name = text(_prop(account, "DisplayName", "displayName")) or text(
                    _prop(account, "FriendlyName", "friendlyName")
                )
        if user_id or tenant or name or ip:
            actor = Actor(id=user_id, name=name, ip=ip, tenant=tenant)
    rid = resource_id or host_id
    return actor, (parse_resource_id(rid.strip()) if rid and rid.strip() else NO_RESOURCE)


def _prop(props: Mapping[str, Any], pascal: str, camel: str) -> Any:
    value = props.get(pascal)
    return props.get(camel) if value is None else value


# -- small helpers ----------------------------------------------------------------------------------------


def _parse_time(value: Any, field: str) -> datetime:
    """Like :func:`~vigil.events.fields.parse_time`; also takes ``datetime`` (``LogsQueryClient`` rows)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return parse_time(value, field)


def _token(value: Any) -> str | None:
    """``"InProgress"`` -> ``"inprogress"``, ``"In Progress"`` -> ``"inprogress"``; non-strings -> None."""
    if not isinstance(value, str):
        return None
    return "".join(value.lower().split()) or None


def _join(value: Any) -> str | None:
    """A comma-separated string or a list of strings as ``"A,B"`` (blank items dropped)."""
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = value
    else:
        return None
    parts = [s for s in (text(i) for i in items) if s and s.strip()]
    return ",".join(p.strip() for p in parts) or None


def _put(labels: dict[str, str], key: str, value: Any) -> None:
    value = text(value)
    if value is not None and value.strip():
        labels[key] = value.strip()

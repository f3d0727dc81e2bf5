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

from collections.abc import Mapping
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.arm import parse_resource_id
from vigil.events.fields import json_in_string, json_type, stable_id
from vigil.events.model import Event, Severity, freeze
from vigil.events.normalize import Normalizer
from vigil.events.normalizers.sentinel_entities import (
    MAX_ENTITY_NODES,
    actor_and_resource,
    alert_entities,
    incident_entities,
    join_values,
    parse_when,
    put_label,
    resolve_refs,
    token,
)

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
            when = parse_when(start, "StartTime")
        else:
            when = parse_when(generated, "TimeGenerated")

        status = token(record.get("Status"))
        actor, entity_resource = actor_and_resource(alert_entities(entities))
        column_resource = record.get("ResourceId")
        resource = (
            parse_resource_id(column_resource.strip())
            if isinstance(column_resource, str) and column_resource.strip()
            else entity_resource
        )
        severity = record.get("AlertSeverity")

        labels: dict[str, str] = {"sentinel.alert_id": alert_id}
        put_label(labels, "sentinel.alert_name", record.get("AlertName") or record.get("DisplayName"))
        put_label(labels, "sentinel.alert_type", record.get("AlertType"))
        put_label(labels, "sentinel.status", record.get("Status"))
        put_label(labels, "sentinel.product", record.get("ProductName"))
        put_label(labels, "sentinel.provider", record.get("ProviderName"))
        put_label(labels, "sentinel.compromised_entity", record.get("CompromisedEntity"))
        put_label(labels, "sentinel.tactics", join_values(record.get("Tactics")))
        put_label(labels, "sentinel.techniques", join_values(raw.get("Techniques")))
        if type(extended) is dict:
            put_label(labels, "sentinel.rule_name", extended.get("Analytic Rule Name"))

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
            when = parse_when(modified, "object.properties.lastModifiedTimeUtc")
        else:
            created = props.get("createdTimeUtc")
            if not created:
                raise NormalizeError("object.properties.createdTimeUtc: missing, and no lastModifiedTimeUtc")
            when = parse_when(created, "object.properties.createdTimeUtc")

        related = props.get("relatedEntities")
        if related is not None and type(related) is not list:
            raise NormalizeError(
                f"object.properties.relatedEntities: expected an array, got {json_type(related)}"
            )
        actor, resource = actor_and_resource(incident_entities(related))

        labels: dict[str, str] = {}
        put_label(labels, "sentinel.incident_id", incident.get("name"))
        put_label(labels, "sentinel.incident_arm_id", incident.get("id"))
        put_label(labels, "sentinel.incident_number", props.get("incidentNumber"))
        put_label(labels, "sentinel.title", props.get("title"))
        put_label(labels, "sentinel.status", props.get("status"))
        put_label(labels, "sentinel.classification", props.get("classification"))
        alerts = props.get("alerts")
        if type(alerts) is list:
            put_label(
                labels,
                "sentinel.alert_ids",
                join_values(
                    [
                        a["properties"].get("systemAlertId")
                        for a in alerts
                        if type(a) is dict and type(a.get("properties")) is dict
                    ]
                ),
            )
        additional = props.get("additionalData")
        if type(additional) is dict:
            put_label(labels, "sentinel.tactics", join_values(additional.get("tactics")))
            put_label(labels, "sentinel.techniques", join_values(additional.get("techniques")))
            put_label(labels, "sentinel.products", join_values(additional.get("alertProductNames")))
        put_label(labels, "sentinel.workspace_id", record.get("workspaceId"))
        workspace = record.get("workspaceInfo")
        if type(workspace) is dict:
            put_label(labels, "sentinel.workspace", workspace.get("WorkspaceName"))

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
            when = parse_when(generated, "TimeGenerated")
        else:
            when = parse_when(modified, "LastModifiedTime")
        created = record.get("CreatedTime")
        is_create = has_modified and bool(created) and parse_when(created, "CreatedTime") == when

        labels: dict[str, str] = {"sentinel.incident_id": name.strip()}
        put_label(labels, "sentinel.incident_number", record.get("IncidentNumber"))
        put_label(labels, "sentinel.title", record.get("Title"))
        put_label(labels, "sentinel.status", record.get("Status"))
        put_label(labels, "sentinel.classification", record.get("Classification"))
        put_label(labels, "sentinel.alert_ids", join_values(raw.get("AlertIds")))
        additional = raw.get("AdditionalData")
        if type(additional) is dict:
            put_label(labels, "sentinel.tactics", join_values(additional.get("tactics")))
            put_label(labels, "sentinel.techniques", join_values(additional.get("techniques")))
            put_label(labels, "sentinel.products", join_values(additional.get("alertProductNames")))

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

__all__ = ["MAX_ENTITY_NODES", "SecurityAlertNormalizer", "SentinelIncidentNormalizer", "resolve_refs"]

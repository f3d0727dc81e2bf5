"""Sentinel SecurityAlert rows and incidents (vigil/events/normalizers/sentinel.py)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EVENT_FIXTURES
from vigil.errors import NormalizeError
from vigil.events.batch import BatchNormalizer
from vigil.events.model import NO_ACTOR, NO_RESOURCE, encode_event
from vigil.events.normalize import normalizers
from vigil.events.normalizers.monitor import CommonAlertNormalizer
from vigil.events.normalizers.sentinel import (
    MAX_ENTITY_NODES,
    SecurityAlertNormalizer,
    SentinelIncidentNormalizer,
    resolve_refs,
)

FIXTURES = EVENT_FIXTURES / "sentinel"
MONITOR_FIXTURES = EVENT_FIXTURES / "monitor"

SUB = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13"
KV_ID = (
    f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.keyvault/vaults/kv-cctrain-weu"
)
VM_ID = f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.compute/virtualmachines/cvm-train-01"
USER = "c4a1e2f3-0b9d-4c8e-a7f6-5d4c3b2a1f0e"
TENANT = "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"

#: reference/azure.md §1.2, abridged: an Activity Log record that no Sentinel format may claim
ACTIVITY_RECORD: dict[str, Any] = {
    "time": "2026-11-24T09:41:07.5123344Z",
    "resourceId": "/SUBSCRIPTIONS/3F9A2C71-8E4D-4B1A-B6C5-0D2E7F9A4C13/RESOURCEGROUPS/RG-CCTRAIN-WEU/PROVIDERS/"
    "MICROSOFT.KEYVAULT/VAULTS/KV-CCTRAIN-WEU",
    "operationName": "MICROSOFT.KEYVAULT/VAULTS/ACCESSPOLICIES/WRITE",
    "category": "Write",
    "resultType": "Success",
    "resultSignature": "Succeeded.OK",
    "callerIpAddress": "203.0.113.45",
    "correlationId": "6b1f0c2e-3a4d-4f59-8e71-90ab12cd34ef",
    "identity": {"claims": {"appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46", "ipaddr": "203.0.113.45"}},
    "level": "Information",
    "location": "global",
    "properties": {"statusCode": "OK", "eventCategory": "Administrative"},
}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def row() -> dict[str, Any]:
    """The SecurityAlert row of reference/azure.md §2.1."""
    return load("good_security_alert_row.json")  # type: ignore[no-any-return]


@pytest.fixture
def defender_rows() -> list[dict[str, Any]]:
    """A Defender-for-Cloud alert with ``$ref`` entities, then its Resolved re-write (data-export envelope)."""
    return load("good_security_alert_export.json")["records"]  # type: ignore[no-any-return]


@pytest.fixture
def trigger() -> dict[str, Any]:
    """The incident-trigger body of reference/azure.md §2.2."""
    return load("good_incident_trigger.json")  # type: ignore[no-any-return]


@pytest.fixture
def incident_rows() -> list[dict[str, Any]]:
    return load("good_security_incident_export.json")["records"]  # type: ignore[no-any-return]


alert = SecurityAlertNormalizer()
incident = SentinelIncidentNormalizer()


# -- registry ------------------------------------------------------------------------------------------------


def test_registered_under_their_names() -> None:
    assert normalizers.get("sentinel-alert") is SecurityAlertNormalizer
    assert normalizers.get("sentinel-incident") is SentinelIncidentNormalizer
    assert SecurityAlertNormalizer.name == "sentinel-alert"
    assert SecurityAlertNormalizer.kind == "sentinel.alert"
    assert SentinelIncidentNormalizer.name == "sentinel-incident"
    assert SentinelIncidentNormalizer.kind == "sentinel.incident"


# -- SecurityAlert: field mapping ------------------------------------------------------------------------------


def test_alert_row_maps_every_field(row: dict[str, Any]) -> None:
    ev = alert.normalize(row)
    assert ev.id == "sa:2f6c1a7e-9b3d-4e21-8c5f-0a1b2c3d4e5f:new"
    assert ev.time == datetime(2026, 11, 24, 9, 47, 31, 118000, tzinfo=UTC)
    assert ev.kind == "sentinel.alert"
    assert ev.action == "alert.new"
    assert ev.outcome == "unknown"
    assert ev.severity == "high"
    # account entity gives the id, ip entity the address; no name or tenant in this row
    assert ev.actor.id == USER
    assert ev.actor.ip == "198.51.100.23"
    assert ev.actor.name is None
    assert ev.actor.tenant is None
    # ResourceId column is "", so the azure-resource entity is the resource
    assert ev.resource.id == KV_ID
    assert ev.resource.type == "microsoft.keyvault/vaults"
    assert ev.resource.name == "kv-cctrain-weu"
    assert ev.resource.subscription == SUB
    assert ev.resource.group == "rg-cctrain-weu"
    assert dict(ev.labels) == {
        "sentinel.alert_id": "2f6c1a7e-9b3d-4e21-8c5f-0a1b2c3d4e5f",
        "sentinel.alert_name": "Key released to non-compliant attestation",
        "sentinel.alert_type": f"{SUB}_a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d",
        "sentinel.status": "New",
        "sentinel.product": "Azure Sentinel",
        "sentinel.provider": "ASI Scheduled Alerts",
        "sentinel.compromised_entity": "kv-cctrain-weu",
        "sentinel.tactics": "CredentialAccess,Exfiltration",
        "sentinel.techniques": "T1552,T1567",
        "sentinel.rule_name": "Key released to non-compliant attestation",
    }
    assert all(type(v) is str for v in ev.labels.values())


def test_alert_raw_holds_decoded_columns_and_source_is_untouched(row: dict[str, Any]) -> None:
    original = copy.deepcopy(row)
    ev = alert.normalize(row)
    assert row == original  # the source row keeps its JSON text
    with pytest.raises(TypeError):
        ev.raw["Techniques"] = None  # type: ignore[index]
    assert ev.raw["Techniques"] == ["T1552", "T1567"]
    assert ev.raw["SubTechniques"] == []
    assert ev.raw["Entities"][0] == {"$id": "2", "Address": "198.51.100.23", "Type": "ip"}
    ext = ev.raw["ExtendedProperties"]
    assert ext["Analytic Rule Name"] == "Key released to non-compliant attestation"
    assert ext["Trigger Threshold"] == "0"
    # JSON text nested inside a decoded column is not a column: it stays text
    assert ext["Analytic Rule Ids"] == '["a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"]'
    # untouched columns are the source's own values
    assert ev.raw["Tactics"] == "CredentialAccess,Exfiltration"
    assert ev.raw["IsIncident"] is False
    # the event encodes (raw included)
    assert json.loads(encode_event(ev))["raw"]["Techniques"] == ["T1552", "T1567"]


def test_alert_every_json_column_is_decoded(defender_rows: list[dict[str, Any]]) -> None:
    ev = alert.normalize(defender_rows[0])
    assert ev.raw["RemediationSteps"] == ["Isolate the VM", "Rotate keys released to the VM"]
    assert ev.raw["ExtendedLinks"][0]["Type"] == "webLink"
    assert ev.raw["SubTechniques"] == ["T1059.004"]
    assert ev.raw["ExtendedProperties"]["Compromised Host"] == "cvm-train-01"


def test_alert_entities_ref_resolution(defender_rows: list[dict[str, Any]]) -> None:
    ev = alert.normalize(defender_rows[0])
    entities = ev.raw["Entities"]
    # top-level {"$ref": "5"} becomes the host defined inside the process entity
    assert entities[2]["Type"] == "host"
    assert entities[2]["HostName"] == "cvm-train-01"
    # nested {"$ref": "3"} becomes the account defined at the top level
    assert entities[1]["Account"]["Name"] == "mallory"
    assert entities[1]["Account"]["Type"] == "account"
    assert not any(isinstance(e, dict) and "$ref" in e for e in entities)
    # actor from the account entity (Name@UPNSuffix) and the ip entity
    assert ev.actor.id == USER
    assert ev.actor.name == "mallory@contoso-ml.example"
    assert ev.actor.tenant == TENANT
    assert ev.actor.ip == "203.0.113.45"
    # the upper-cased ResourceId column is the resource, lower-cased
    assert ev.resource.id == VM_ID
    assert ev.resource.type == "microsoft.compute/virtualmachines"
    assert ev.resource.name == "cvm-train-01"


def test_alert_top_level_ref_to_an_account_gives_the_actor() -> None:
    entities = [
        {"$id": "1", "Type": "process", "Account": {"$id": "2", "Type": "account", "AadUserId": USER}},
        {"$ref": "2"},
    ]
    ev = alert.normalize(_row(Entities=json.dumps(entities)))
    assert ev.actor.id == USER
    assert ev.raw["Entities"][1] == {"$id": "2", "Type": "account", "AadUserId": USER}


def test_resolve_refs_keeps_cycles_and_unknown_refs_and_does_not_mutate() -> None:
    entities: list[Any] = [
        {"$id": "1", "Type": "host", "Parent": {"$id": "2", "Type": "process", "Host": {"$ref": "1"}}},
        {"$ref": "2"},
        {"$ref": "99"},
    ]
    before = copy.deepcopy(entities)
    out = resolve_refs(entities, "Entities")
    assert entities == before
    # the cycle host -> process -> host stops at the reference
    assert out[0]["Parent"]["Host"] == {"$ref": "1"}
    # the process resolved at the top level expands its host once, then stops at the back-reference
    assert out[1]["Host"]["Parent"]["Host"] == {"$ref": "1"}
    assert out[1]["Host"]["Parent"]["Type"] == "process"
    assert out[2] == {"$ref": "99"}


def test_resolve_refs_caps_expansion() -> None:
    # each level references the previous one twice: 2**20 objects if expanded naively
    entities: list[Any] = [{"$id": "0", "Type": "file"}]
    for i in range(1, 21):
        entities.append({"$id": str(i), "Type": "x", "a": {"$ref": str(i - 1)}, "b": {"$ref": str(i - 1)}})
    with pytest.raises(NormalizeError) as err:
        resolve_refs(entities, "Entities")
    assert err.value.reason == f"Entities: $ref expansion exceeds {MAX_ENTITY_NODES} objects"


def test_alert_resource_precedence() -> None:
    host = {"$id": "1", "Type": "host", "AzureID": VM_ID}
    res = {"$id": "2", "Type": "azure-resource", "ResourceId": KV_ID.upper()}
    # column set: it wins over entities
    ev = alert.normalize(_row(ResourceId=VM_ID, Entities=json.dumps([res])))
    assert ev.resource.id == VM_ID
    # column empty: the azure-resource entity, even when a host comes first
    ev = alert.normalize(_row(ResourceId="", Entities=json.dumps([host, res])))
    assert ev.resource.id == KV_ID
    # no azure-resource entity: the host's AzureID
    ev = alert.normalize(_row(Entities=json.dumps([host])))
    assert ev.resource.id == VM_ID
    # nothing at all
    ev = alert.normalize(_row())
    assert ev.resource is NO_RESOURCE
    assert ev.actor is NO_ACTOR


def test_alert_first_account_and_ip_win() -> None:
    entities = [
        {"$id": "1", "Type": "account", "Name": "first@contoso-ml.example"},
        {"$id": "2", "Type": "ip", "Address": "192.0.2.1"},
        {"$id": "3", "Type": "account", "Name": "second", "UPNSuffix": "contoso-ml.example"},
        {"$id": "4", "Type": "ip", "Address": "192.0.2.2"},
    ]
    ev = alert.normalize(_row(Entities=json.dumps(entities)))
    # a Name that already holds a UPN is not suffixed again
    assert ev.actor.name == "first@contoso-ml.example"
    assert ev.actor.ip == "192.0.2.1"


def test_alert_account_display_name_fallback() -> None:
    entities = [{"$id": "1", "Type": "account", "DisplayName": "Mallory"}]
    assert alert.normalize(_row(Entities=json.dumps(entities))).actor.name == "Mallory"


def test_alert_already_decoded_columns_pass_through() -> None:
    entities = [{"$id": "1", "Type": "ip", "Address": "198.51.100.9"}, {"$ref": "1"}]
    ev = alert.normalize(_row(Entities=entities, ExtendedProperties={"k": "v"}, Techniques=["T1"]))
    assert ev.actor.ip == "198.51.100.9"
    assert ev.raw["Entities"][1]["Address"] == "198.51.100.9"
    assert ev.labels["sentinel.techniques"] == "T1"


def test_alert_empty_json_columns_become_none() -> None:
    ev = alert.normalize(_row(Entities="", ExtendedProperties="  ", Techniques=""))
    assert ev.raw["Entities"] is None
    assert ev.raw["ExtendedProperties"] is None
    assert ev.actor is NO_ACTOR
    assert "sentinel.techniques" not in ev.labels


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("High", "high"),
        ("MEDIUM", "medium"),
        ("Low", "low"),
        ("Informational", "informational"),
        ("Critical", None),
        (None, None),
        (3, None),
    ],
)
def test_alert_severity_map(value: Any, expected: str | None) -> None:
    assert alert.normalize(_row(AlertSeverity=value)).severity == expected


@pytest.mark.parametrize(
    ("status", "action", "suffix"),
    [
        ("New", "alert.new", ":new"),
        ("InProgress", "alert.inprogress", ":inprogress"),
        ("In Progress", "alert.inprogress", ":inprogress"),
        ("Resolved", "alert.resolved", ":resolved"),
        ("Dismissed", "alert.dismissed", ":dismissed"),
        (None, "alert", ""),
        ("", "alert", ""),
    ],
)
def test_alert_status_gives_action_and_id(status: Any, action: str, suffix: str) -> None:
    ev = alert.normalize(_row(Status=status))
    assert ev.action == action
    assert ev.id == "sa:0a1b2c3d-0000-4000-8000-00000000000a" + suffix


def test_alert_id_stable_across_redelivery_and_new_on_status_change(
    row: dict[str, Any], defender_rows: list[dict[str, Any]]
) -> None:
    assert alert.normalize(row).id == alert.normalize(copy.deepcopy(row)).id
    # the same row delivered twice through the batch path
    body = json.dumps({"records": [row, row]}).encode()
    res = BatchNormalizer("sentinel-alert").body(body, "t")
    assert len({e.id for e in res.events}) == 1
    # a status change is a new record of the same alert
    new, resolved = (alert.normalize(r) for r in defender_rows)
    assert new.id != resolved.id
    assert new.labels["sentinel.alert_id"] == resolved.labels["sentinel.alert_id"]
    assert resolved.action == "alert.resolved"
    assert resolved.time == datetime(2026, 11, 24, 11, 15, 42, tzinfo=UTC)
    # ids are case-insensitive in the SystemAlertId
    upper = alert.normalize(_row(SystemAlertId="0A1B2C3D-0000-4000-8000-00000000000A"))
    assert upper.id == alert.normalize(_row()).id
    assert upper.labels["sentinel.alert_id"] == "0A1B2C3D-0000-4000-8000-00000000000A"


def test_alert_time_falls_back_to_start_time() -> None:
    rec = _row(StartTime="2026-11-24T08:00:00Z")
    del rec["TimeGenerated"]
    assert alert.normalize(rec).time == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    assert alert.normalize(_row(TimeGenerated="", StartTime="2026-11-24T08:00:00Z")).time.hour == 8


def test_alert_accepts_datetime_values() -> None:
    when = datetime(2026, 11, 24, 9, 47, 31)
    assert alert.normalize(_row(TimeGenerated=when)).time == when.replace(tzinfo=UTC)


def test_alert_tactics_are_split_and_trimmed() -> None:
    ev = alert.normalize(_row(Tactics=" Execution , CommandAndControl,,"))
    assert ev.labels["sentinel.tactics"] == "Execution,CommandAndControl"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"SystemAlertId": None}, "SystemAlertId: missing or not a string"),
        ({"SystemAlertId": " "}, "SystemAlertId: missing or not a string"),
        ({"TimeGenerated": None}, "TimeGenerated: missing, and no StartTime to fall back on"),
        ({"TimeGenerated": "yesterday"}, "TimeGenerated: not an ISO 8601 timestamp: 'yesterday'"),
        ({"TimeGenerated": None, "StartTime": "soon"}, "StartTime: not an ISO 8601 timestamp: 'soon'"),
        ({"Entities": '{"Type": "ip"}'}, "Entities: expected a JSON array, got object"),
        ({"Entities": '"text"'}, "Entities: expected a JSON array, got string"),
        ({"ExtendedProperties": "[1, 2]"}, "ExtendedProperties: expected a JSON object, got array"),
    ],
)
def test_alert_errors_are_precise(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(NormalizeError) as err:
        alert.normalize(_row(**changes))
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "column",
    ["Entities", "ExtendedProperties", "Techniques", "SubTechniques", "ExtendedLinks", "RemediationSteps"],
)
def test_alert_column_that_is_not_json_names_the_column(column: str) -> None:
    with pytest.raises(NormalizeError) as err:
        alert.normalize(_row(**{column: '[{"$id": "2", "Address":'}))
    assert err.value.reason.startswith(f"{column}: not valid JSON text: ")


def test_alert_detect() -> None:
    assert alert.detect(load("good_security_alert_row.json"))
    assert alert.detect(
        {"SystemAlertId": "x", "TimeGenerated": "t", "AlertSeverity": "Low"}
    )  # poll projection
    assert alert.detect({"SystemAlertId": "x", "DisplayName": "d"})
    assert alert.detect({"SystemAlertId": "x", "Type": "SecurityAlert"})
    assert not alert.detect({"SystemAlertId": "x"})
    assert not alert.detect({"AlertName": "x", "AlertSeverity": "High"})
    assert not alert.detect(ACTIVITY_RECORD)
    assert not alert.detect(load("good_incident_trigger.json"))
    for rec in load("good_security_incident_export.json")["records"]:
        assert not alert.detect(rec)
    assert not alert.detect(json.loads((MONITOR_FIXTURES / "good_activity_log_alert.json").read_text()))


# -- incidents: the playbook trigger body ----------------------------------------------------------------------


def test_incident_trigger_maps_every_field(trigger: dict[str, Any]) -> None:
    ev = incident.normalize(trigger)
    assert ev.id == "si:51a7c9e0-3b2d-4f18-9e6a-7c8d9e0f1a2b"
    assert ev.time == datetime(2026, 11, 24, 9, 47, 40, 221100, tzinfo=UTC)  # createdTimeUtc
    assert ev.kind == "sentinel.incident"
    assert ev.action == "incident.create"
    assert ev.outcome == "unknown"
    assert ev.severity == "high"
    assert ev.actor.ip == "198.51.100.23"
    assert ev.actor.id is None
    assert ev.resource is NO_RESOURCE  # no AzureResource entity; the incident's own id is a label
    arm_id = trigger["object"]["id"]
    assert dict(ev.labels) == {
        "sentinel.incident_id": "9d8c7b6a-5f4e-4d3c-b2a1-0f9e8d7c6b5a",
        "sentinel.incident_arm_id": arm_id,
        "sentinel.incident_number": "412",
        "sentinel.title": "Key released to non-compliant attestation",
        "sentinel.status": "New",
        "sentinel.alert_ids": "2f6c1a7e-9b3d-4e21-8c5f-0a1b2c3d4e5f",
        "sentinel.tactics": "CredentialAccess",
        "sentinel.techniques": "T1552",
        "sentinel.products": "Azure Sentinel",
        "sentinel.workspace_id": "5c0de1a4-77b2-4e0f-9d6a-1b2c3d4e5f60",
        "sentinel.workspace": "law-sec-weu",
    }
    assert ev.raw["object"]["properties"]["incidentNumber"] == 412
    assert json.loads(encode_event(ev))["raw"]["eventUniqueId"] == trigger["eventUniqueId"]


def test_incident_update_with_entities() -> None:
    ev = incident.normalize(load("good_incident_update.json"))
    assert ev.action == "incident.update"
    assert ev.id == "si:6e5d4c3b-2a19-4f08-8e7d-6c5b4a392817"
    assert ev.time == datetime(2026, 11, 24, 10, 30, 5, 123456, tzinfo=UTC)  # lastModifiedTimeUtc
    assert ev.severity == "medium"
    assert ev.actor.id == USER
    assert ev.actor.name == "mallory@contoso-ml.example"
    assert ev.actor.tenant == TENANT
    assert ev.actor.ip == "198.51.100.23"
    assert ev.resource.id == KV_ID
    assert ev.resource.type == "microsoft.keyvault/vaults"
    assert ev.labels["sentinel.status"] == "Closed"
    assert ev.labels["sentinel.classification"] == "TruePositive"
    assert ev.labels["sentinel.alert_ids"] == (
        "2f6c1a7e-9b3d-4e21-8c5f-0a1b2c3d4e5f,2517538088322968242_0f1e2d3c-4b5a-4968-8778-695a4b3c2d1e"
    )


def test_incident_trigger_id_is_stable(trigger: dict[str, Any]) -> None:
    assert incident.normalize(trigger).id == incident.normalize(copy.deepcopy(trigger)).id


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.pop("objectEventType"), "objectEventType: missing or not a string"),
        (lambda t: t.update(eventUniqueId=7), "eventUniqueId: missing or not a string"),
        (lambda t: t.pop("object"), "object: missing or not an object"),
        (lambda t: t["object"].pop("properties"), "object.properties: missing or not an object"),
        (
            lambda t: t["object"]["properties"].pop("createdTimeUtc"),
            "object.properties.createdTimeUtc: missing, and no lastModifiedTimeUtc",
        ),
        (
            lambda t: t["object"]["properties"].update(lastModifiedTimeUtc="later"),
            "object.properties.lastModifiedTimeUtc: not an ISO 8601 timestamp: 'later'",
        ),
        (
            lambda t: t["object"]["properties"].update(relatedEntities={"kind": "Ip"}),
            "object.properties.relatedEntities: expected an array, got object",
        ),
    ],
)
def test_incident_trigger_errors_are_precise(trigger: dict[str, Any], mutate: Any, reason: str) -> None:
    mutate(trigger)
    with pytest.raises(NormalizeError) as err:
        incident.normalize(trigger)
    assert err.value.reason == reason


# -- incidents: SecurityIncident rows --------------------------------------------------------------------------


def test_incident_rows_map_every_field(incident_rows: list[dict[str, Any]]) -> None:
    created, closed = (incident.normalize(r) for r in incident_rows)
    assert created.kind == closed.kind == "sentinel.incident"
    assert created.action == "incident.create"  # LastModifiedTime == CreatedTime
    assert closed.action == "incident.update"
    assert created.time == datetime(2026, 11, 24, 9, 47, 40, 221100, tzinfo=UTC)
    assert closed.time == datetime(2026, 11, 24, 10, 30, 5, 123456, tzinfo=UTC)
    assert created.severity == "high"
    assert created.outcome == "unknown"
    assert created.actor is NO_ACTOR
    assert created.resource is NO_RESOURCE
    assert created.id.startswith("si:")
    assert created.id != closed.id
    assert dict(closed.labels) == {
        "sentinel.incident_id": "9d8c7b6a-5f4e-4d3c-b2a1-0f9e8d7c6b5a",
        "sentinel.incident_number": "412",
        "sentinel.title": "Key released to non-compliant attestation",
        "sentinel.status": "Closed",
        "sentinel.classification": "TruePositive",
        "sentinel.alert_ids": "2f6c1a7e-9b3d-4e21-8c5f-0a1b2c3d4e5f",
        "sentinel.tactics": "CredentialAccess",
        "sentinel.techniques": "T1552",
        "sentinel.products": "Azure Sentinel",
    }
    # dynamic columns are decoded into raw
    assert closed.raw["AlertIds"] == ["2f6c1a7e-9b3d-4e21-8c5f-0a1b2c3d4e5f"]
    assert closed.raw["Owner"]["userPrincipalName"] == "soc-analyst@contoso-ml.example"
    assert closed.raw["AdditionalData"]["alertsCount"] == 1
    assert closed.raw["Labels"] == []
    assert isinstance(incident_rows[1]["AlertIds"], str)  # source row untouched


def test_incident_row_id_is_stable(incident_rows: list[dict[str, Any]]) -> None:
    first = incident_rows[0]
    assert incident.normalize(first).id == incident.normalize(copy.deepcopy(first)).id
    # the same instant written differently is the same record
    assert incident.normalize(dict(first, LastModifiedTime="2026-11-24T09:47:40.2211+00:00")).id == (
        incident.normalize(first).id
    )


def test_incident_row_time_fallback_and_errors(incident_rows: list[dict[str, Any]]) -> None:
    rec = dict(incident_rows[1])
    del rec["LastModifiedTime"]
    ev = incident.normalize(rec)
    assert ev.time == datetime(2026, 11, 24, 10, 30, 6, tzinfo=UTC)  # TimeGenerated
    assert ev.action == "incident.update"
    del rec["TimeGenerated"]
    with pytest.raises(NormalizeError) as err:
        incident.normalize(rec)
    assert err.value.reason == "LastModifiedTime: missing, and no TimeGenerated to fall back on"
    with pytest.raises(NormalizeError) as err:
        incident.normalize(dict(incident_rows[0], IncidentName=None))
    assert err.value.reason == "IncidentName: missing or not a string"
    with pytest.raises(NormalizeError) as err:
        incident.normalize(dict(incident_rows[0], AdditionalData="{"))
    assert err.value.reason.startswith("AdditionalData: not valid JSON text: ")


def test_incident_detect() -> None:
    assert incident.detect(load("good_incident_trigger.json"))
    assert incident.detect(load("good_incident_update.json"))
    for rec in load("good_security_incident_export.json")["records"]:
        assert incident.detect(rec)
    assert not incident.detect({"eventUniqueId": "x", "objectSchemaType": "Alert", "object": {}})
    assert not incident.detect({"IncidentName": "x"})
    assert not incident.detect({"IncidentName": "x", "IncidentNumber": 1, "SystemAlertId": "y"})
    assert not incident.detect(ACTIVITY_RECORD)
    assert not incident.detect(load("good_security_alert_row.json"))
    for rec in load("good_security_alert_export.json")["records"]:
        assert not incident.detect(rec)
    assert not incident.detect(json.loads((MONITOR_FIXTURES / "good_activity_log_alert.json").read_text()))


def test_monitor_detect_rejects_sentinel_records() -> None:
    monitor = CommonAlertNormalizer()
    for name in ("good_security_alert_row.json", "good_incident_trigger.json", "good_incident_update.json"):
        assert not monitor.detect(load(name))
    for rec in load("good_security_incident_export.json")["records"]:
        assert not monitor.detect(rec)


# -- through the batch path (auto-detection) --------------------------------------------------------------------


def test_data_export_envelope_through_forced_format() -> None:
    res = BatchNormalizer("sentinel-alert").body(
        (FIXTURES / "good_security_alert_export.json").read_bytes(), "t"
    )
    assert not res.dead
    assert [e.action for e in res.events] == ["alert.new", "alert.resolved"]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("good_*")), ids=lambda p: p.name)
def test_good_fixtures_auto(path: Path) -> None:
    res = BatchNormalizer("auto").body(path.read_bytes(), path.name)
    assert [d.reason for d in res.dead] == []
    assert res.events
    assert {e.kind for e in res.events} <= {"sentinel.alert", "sentinel.incident"}


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("bad_*")), ids=lambda p: p.name)
def test_bad_fixtures_auto(path: Path) -> None:
    res = BatchNormalizer("auto").body(path.read_bytes(), path.name)
    assert res.dead
    assert all(d.format in ("sentinel-alert", "sentinel-incident") for d in res.dead)


def test_bad_fixture_reasons() -> None:
    res = BatchNormalizer("auto").body((FIXTURES / "bad_entities_broken_json.json").read_bytes(), "t")
    assert len(res.dead) == 1
    assert res.dead[0].reason.startswith("Entities: not valid JSON text: ")
    res = BatchNormalizer("auto").body((FIXTURES / "bad_alert_rows.jsonl").read_bytes(), "t")
    assert len(res.events) == 1
    assert [d.reason.split(":")[0] for d in res.dead] == [
        "TimeGenerated",
        "ExtendedProperties",
        "Techniques",
        "TimeGenerated",
        "SystemAlertId",
    ]
    res = BatchNormalizer("auto").body((FIXTURES / "bad_incident_triggers.jsonl").read_bytes(), "t")
    assert [d.reason for d in res.dead] == [
        "objectEventType: missing or not a string",
        "object.properties: missing or not an object",
        "object.properties.createdTimeUtc: missing, and no lastModifiedTimeUtc",
    ]


def test_mixed_stream_auto_detects_each_record(row: dict[str, Any], trigger: dict[str, Any]) -> None:
    monitor_alert = json.loads((MONITOR_FIXTURES / "good_activity_log_alert.json").read_text())
    lines = [row, trigger, monitor_alert, *load("good_security_incident_export.json")["records"]]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    res = BatchNormalizer("auto").body(body, "t")
    assert not res.dead
    assert [e.kind for e in res.events] == [
        "sentinel.alert",
        "sentinel.incident",
        "azure.monitor.alert",
        "sentinel.incident",
        "sentinel.incident",
    ]


# -- helpers --------------------------------------------------------------------------------------------------


def _row(**changes: Any) -> dict[str, Any]:
    """A minimal SecurityAlert row, with ``changes`` applied."""
    rec: dict[str, Any] = {
        "TimeGenerated": "2026-11-24T09:47:31.118Z",
        "SystemAlertId": "0a1b2c3d-0000-4000-8000-00000000000a",
        "AlertName": "Test alert",
        "AlertSeverity": "Medium",
        "Status": "New",
        "Type": "SecurityAlert",
    }
    rec.update(changes)
    return rec

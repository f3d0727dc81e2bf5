"""Azure Monitor common alert schema (vigil/events/normalizers/monitor.py)."""

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
from vigil.events.normalizers.sentinel import SecurityAlertNormalizer, SentinelIncidentNormalizer

FIXTURES = EVENT_FIXTURES / "monitor"
SENTINEL_FIXTURES = EVENT_FIXTURES / "sentinel"

SUB = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13"
NIC_ID = f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.network/networkinterfaces/cvm-train-01-nic"
VM_ID = f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.compute/virtualmachines/cvm-train-01"
KV_ID = (
    f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.keyvault/vaults/kv-cctrain-weu"
)

#: reference/azure.md §1.2, abridged: an Activity Log record that the monitor format must not claim
ACTIVITY_RECORD: dict[str, Any] = {
    "time": "2026-11-24T09:41:07.5123344Z",
    "resourceId": "/SUBSCRIPTIONS/3F9A2C71-8E4D-4B1A-B6C5-0D2E7F9A4C13/RESOURCEGROUPS/RG-CCTRAIN-WEU/PROVIDERS/"
    "MICROSOFT.KEYVAULT/VAULTS/KV-CCTRAIN-WEU",
    "operationName": "MICROSOFT.KEYVAULT/VAULTS/ACCESSPOLICIES/WRITE",
    "category": "Write",
    "resultType": "Success",
    "correlationId": "6b1f0c2e-3a4d-4f59-8e71-90ab12cd34ef",
    "level": "Information",
    "properties": {"statusCode": "OK", "eventCategory": "Administrative"},
}

monitor = CommonAlertNormalizer()


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def activity_alert() -> dict[str, Any]:
    """The activity-log alert of reference/azure.md §2.3."""
    return load("good_activity_log_alert.json")  # type: ignore[no-any-return]


@pytest.fixture
def metric_alert() -> dict[str, Any]:
    return load("good_metric_alert_fired.json")  # type: ignore[no-any-return]


def test_registered_under_its_name() -> None:
    assert normalizers.get("monitor-alert") is CommonAlertNormalizer
    assert CommonAlertNormalizer.name == "monitor-alert"
    assert CommonAlertNormalizer.kind == "azure.monitor.alert"


def test_activity_log_alert_maps_every_field(activity_alert: dict[str, Any]) -> None:
    ev = monitor.normalize(activity_alert)
    assert ev.id.startswith("ma:") and len(ev.id) == 3 + 32
    assert ev.time == datetime(2026, 11, 24, 9, 52, 10, 441000, tzinfo=UTC)
    assert ev.kind == "azure.monitor.alert"
    assert ev.action == "alert.fired"
    assert ev.outcome == "unknown"
    assert ev.severity == "high"  # Sev1
    assert ev.resource.id == NIC_ID
    assert ev.resource.type == "microsoft.network/networkinterfaces"
    assert ev.resource.name == "cvm-train-01-nic"
    assert ev.resource.subscription == SUB
    assert ev.resource.group == "rg-cctrain-weu"
    # caller (a UPN) is the name; claims give the app id; httpRequest (JSON text) the IP
    assert ev.actor.name == "mallory@contoso-ml.example"
    assert ev.actor.type == "user"
    assert ev.actor.app_id == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert ev.actor.ip == "203.0.113.45"
    assert ev.actor.id is None
    assert dict(ev.labels) == {
        "monitor.alert_id": f"/subscriptions/{SUB}/providers/Microsoft.AlertsManagement/alerts/"
        "e1d2c3b4-a596-4877-8a69-5b4c3d2e1f00",
        "monitor.alert_rule": "nic-nsg-detached-on-cvm",
        "monitor.severity": "Sev1",
        "monitor.signal_type": "Activity Log",
        "monitor.monitoring_service": "Activity Log - Administrative",
        "monitor.condition": "Fired",
        "monitor.operation": "microsoft.network/networkinterfaces/write",
        "monitor.custom.engine-route": "quarantine-candidate",
    }


def test_raw_holds_decoded_claims_and_http_request(activity_alert: dict[str, Any]) -> None:
    original = copy.deepcopy(activity_alert)
    ev = monitor.normalize(activity_alert)
    assert activity_alert == original  # the body itself keeps its JSON text
    ctx = ev.raw["data"]["alertContext"]
    assert ctx["claims"] == {"appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46", "ipaddr": "203.0.113.45"}
    assert ctx["httpRequest"]["method"] == "PUT"
    assert ctx["caller"] == "mallory@contoso-ml.example"
    assert ev.raw["data"]["essentials"] is activity_alert["data"]["essentials"]  # not copied
    assert json.loads(encode_event(ev))["raw"]["data"]["alertContext"]["httpRequest"]["clientIpAddress"] == (
        "203.0.113.45"
    )


def test_raw_is_the_record_when_nothing_is_decoded(metric_alert: dict[str, Any]) -> None:
    ev = monitor.normalize(metric_alert)
    assert dict(ev.raw) == metric_alert
    assert ev.raw["data"] is metric_alert["data"]


def test_metric_alert_fired_and_resolved(metric_alert: dict[str, Any]) -> None:
    fired = monitor.normalize(metric_alert)
    resolved = monitor.normalize(load("good_metric_alert_resolved.json"))
    assert fired.action == "alert.fired"
    assert resolved.action == "alert.resolved"
    assert fired.time == datetime(2026, 11, 24, 11, 5, 22, 301000, tzinfo=UTC)  # firedDateTime
    assert resolved.time == datetime(2026, 11, 24, 11, 41, 9, 882000, tzinfo=UTC)  # resolvedDateTime
    assert fired.id != resolved.id  # same alertId, different records
    assert fired.labels["monitor.alert_id"] == resolved.labels["monitor.alert_id"]
    assert fired.severity == resolved.severity == "medium"  # Sev2
    assert fired.resource.id == resolved.resource.id == VM_ID
    assert fired.actor is NO_ACTOR
    assert fired.labels["monitor.signal_type"] == "Metric"
    assert fired.labels["monitor.monitoring_service"] == "Platform"
    assert "monitor.operation" not in fired.labels
    assert not any(k.startswith("monitor.custom.") for k in fired.labels)  # customProperties is null


def test_log_alert_v2() -> None:
    ev = monitor.normalize(load("good_log_alert_v2.json"))
    assert ev.severity == "high"  # Sev0
    assert ev.labels["monitor.severity"] == "Sev0"
    assert ev.labels["monitor.signal_type"] == "Log"
    assert ev.labels["monitor.monitoring_service"] == "Log Alerts V2"
    assert ev.labels["monitor.custom.engine-route"] == "rotate-candidate"
    assert ev.labels["monitor.custom.owner"] == "platform-team"
    assert ev.resource.id == KV_ID
    assert ev.actor is NO_ACTOR
    assert ev.raw["data"]["alertContext"]["condition"]["allOf"][0]["metricValue"] == 9


def test_resolved_without_resolved_time_falls_back_to_fired(metric_alert: dict[str, Any]) -> None:
    metric_alert["data"]["essentials"]["monitorCondition"] = "Resolved"
    ev = monitor.normalize(metric_alert)
    assert ev.action == "alert.resolved"
    assert ev.time == datetime(2026, 11, 24, 11, 5, 22, 301000, tzinfo=UTC)


def test_fired_ignores_a_resolved_time(metric_alert: dict[str, Any]) -> None:
    metric_alert["data"]["essentials"]["resolvedDateTime"] = "2026-11-24T12:00:00Z"
    assert monitor.normalize(metric_alert).time.hour == 11


@pytest.mark.parametrize(
    ("sev", "expected"),
    [
        ("Sev0", "high"),
        ("Sev1", "high"),
        ("Sev2", "medium"),
        ("Sev3", "low"),
        ("Sev4", "informational"),
        ("sev3", "low"),
        ("Sev9", None),
        (None, None),
        (2, None),
    ],
)
def test_severity_map(metric_alert: dict[str, Any], sev: Any, expected: str | None) -> None:
    metric_alert["data"]["essentials"]["severity"] = sev
    assert monitor.normalize(metric_alert).severity == expected


def test_id_is_stable(activity_alert: dict[str, Any], metric_alert: dict[str, Any]) -> None:
    assert monitor.normalize(activity_alert).id == monitor.normalize(copy.deepcopy(activity_alert)).id
    # case of the alert id and of the condition does not matter
    other = copy.deepcopy(metric_alert)
    ess = other["data"]["essentials"]
    ess["alertId"] = ess["alertId"].upper()
    ess["monitorCondition"] = "FIRED"
    assert monitor.normalize(other).id == monitor.normalize(metric_alert).id
    # the action group's retry sends the same body again (good_alerts.jsonl repeats its first line)
    events = BatchNormalizer("monitor-alert").body((FIXTURES / "good_alerts.jsonl").read_bytes(), "t").events
    assert len(events) == 3
    assert events[0].id == events[2].id != events[1].id
    assert [e.severity for e in events] == ["low", "informational", "low"]


def test_unknown_keys_are_ignored(metric_alert: dict[str, Any]) -> None:
    metric_alert["data"]["essentials"]["somethingNew"] = {"x": 1}
    metric_alert["data"]["extra"] = [1, 2]
    metric_alert["extra"] = True
    assert monitor.normalize(metric_alert).action == "alert.fired"


def test_missing_context_and_targets(metric_alert: dict[str, Any]) -> None:
    del metric_alert["data"]["alertContext"]
    del metric_alert["data"]["essentials"]["alertTargetIDs"]
    ev = monitor.normalize(metric_alert)
    assert ev.resource is NO_RESOURCE
    assert ev.actor is NO_ACTOR
    metric_alert["data"]["essentials"]["alertTargetIDs"] = []
    assert monitor.normalize(metric_alert).resource is NO_RESOURCE
    metric_alert["data"]["essentials"]["alertTargetIDs"] = VM_ID.upper()  # a lone string
    assert monitor.normalize(metric_alert).resource.id == VM_ID


def test_actor_from_claims_and_caller_variants(activity_alert: dict[str, Any]) -> None:
    ctx = activity_alert["data"]["alertContext"]
    # decoded values pass through; long-form claims win; the ipaddr claim is the fallback IP
    ctx["claims"] = {
        "http://schemas.microsoft.com/identity/claims/objectidentifier": "0f1e2d3c-4b5a-4968-8778-695a4b3c2d1e",
        "http://schemas.microsoft.com/identity/claims/tenantid": "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90",
        "ipaddr": "198.51.100.7",
    }
    del ctx["httpRequest"]
    ev = monitor.normalize(activity_alert)
    assert ev.actor.id == "0f1e2d3c-4b5a-4968-8778-695a4b3c2d1e"
    assert ev.actor.tenant == "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"
    assert ev.actor.ip == "198.51.100.7"
    assert ev.actor.name == "mallory@contoso-ml.example"
    # a service principal caller (a GUID) is the id when the claims have no object id
    ctx["caller"] = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
    ctx["claims"] = json.dumps({"appid": "5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"})
    ctx["httpRequest"] = json.dumps({"clientIpAddress": "192.0.2.44:50123"})
    ev = monitor.normalize(activity_alert)
    assert ev.actor.id == "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
    assert ev.actor.type == "serviceprincipal"
    assert ev.actor.app_id == "5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
    assert ev.actor.ip == "192.0.2.44"  # port stripped
    # a caller equal to the app id is not taken as an object id
    ctx["caller"] = "5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
    assert monitor.normalize(activity_alert).actor.id is None


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r.pop("data"), "data: missing or not an object"),
        (lambda r: r.update(data=[]), "data: missing or not an object"),
        (lambda r: r["data"].pop("essentials"), "data.essentials: missing or not an object"),
        (
            lambda r: r["data"]["essentials"].pop("alertId"),
            "data.essentials.alertId: missing or not a string",
        ),
        (
            lambda r: r["data"]["essentials"].update(monitorCondition=None),
            "data.essentials.monitorCondition: missing or not a string",
        ),
        (lambda r: r["data"]["essentials"].pop("firedDateTime"), "data.essentials.firedDateTime: missing"),
        (
            lambda r: r["data"]["essentials"].update(firedDateTime="at dawn"),
            "data.essentials.firedDateTime: not an ISO 8601 timestamp: 'at dawn'",
        ),
        (
            lambda r: r["data"]["essentials"].update(alertTargetIDs={"id": "x"}),
            "data.essentials.alertTargetIDs: expected an array of ARM ids, got object",
        ),
        (
            lambda r: r["data"]["essentials"].update(alertTargetIDs=[7]),
            "data.essentials.alertTargetIDs[0]: expected an ARM id string, got number",
        ),
    ],
)
def test_errors_are_precise(metric_alert: dict[str, Any], mutate: Any, reason: str) -> None:
    mutate(metric_alert)
    with pytest.raises(NormalizeError) as err:
        monitor.normalize(metric_alert)
    assert err.value.reason == reason


def test_resolved_without_any_time_is_an_error(metric_alert: dict[str, Any]) -> None:
    ess = metric_alert["data"]["essentials"]
    ess["monitorCondition"] = "Resolved"
    del ess["firedDateTime"]
    with pytest.raises(NormalizeError) as err:
        monitor.normalize(metric_alert)
    assert err.value.reason == "data.essentials.resolvedDateTime: missing, and no firedDateTime"


@pytest.mark.parametrize("field", ["claims", "httpRequest"])
def test_json_text_that_is_not_json_names_the_field(activity_alert: dict[str, Any], field: str) -> None:
    activity_alert["data"]["alertContext"][field] = "{not json"
    with pytest.raises(NormalizeError) as err:
        monitor.normalize(activity_alert)
    assert err.value.reason.startswith(f"data.alertContext.{field}: not valid JSON text: ")


def test_detect() -> None:
    assert monitor.detect(load("good_activity_log_alert.json"))
    assert monitor.detect({"schemaId": "AzureMonitorCommonAlertSchema", "data": {}})
    assert not monitor.detect({"schemaId": "Microsoft.Insights/activityLogs", "data": {}})
    assert not monitor.detect({"data": {"essentials": {}}})
    assert not monitor.detect(ACTIVITY_RECORD)
    for name in ("good_security_alert_row.json", "good_incident_trigger.json"):
        assert not monitor.detect(json.loads((SENTINEL_FIXTURES / name).read_text()))


def test_sentinel_formats_do_not_claim_monitor_alerts() -> None:
    for path in sorted(FIXTURES.glob("good_*.json")):
        rec = json.loads(path.read_text())
        assert not SecurityAlertNormalizer().detect(rec), path.name
        assert not SentinelIncidentNormalizer().detect(rec), path.name


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("good_*")), ids=lambda p: p.name)
def test_good_fixtures_auto(path: Path) -> None:
    res = BatchNormalizer("auto").body(path.read_bytes(), path.name)
    assert [d.reason for d in res.dead] == []
    assert res.events
    assert {e.kind for e in res.events} == {"azure.monitor.alert"}


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("bad_*")), ids=lambda p: p.name)
def test_bad_fixtures_auto(path: Path) -> None:
    res = BatchNormalizer("auto").body(path.read_bytes(), path.name)
    assert res.dead
    assert all(d.format == "monitor-alert" for d in res.dead)


def test_bad_fixture_reasons() -> None:
    res = BatchNormalizer("auto").body((FIXTURES / "bad_alerts.jsonl").read_bytes(), "t")
    assert len(res.events) == 1
    assert [d.reason.split(":")[0] for d in res.dead] == [
        "data.essentials.firedDateTime",
        "data.essentials.alertId",
        "data.essentials.monitorCondition",
        "data.essentials.alertTargetIDs",
        "data",
        "data.alertContext.httpRequest",
    ]
    res = BatchNormalizer("auto").body((FIXTURES / "bad_activity_alert_claims.json").read_bytes(), "t")
    assert [d.reason.split(":")[0] for d in res.dead] == ["data.alertContext.claims"]
    res = BatchNormalizer("auto").body((FIXTURES / "bad_missing_essentials.json").read_bytes(), "t")
    assert [d.reason for d in res.dead] == ["data.essentials: missing or not an object"]

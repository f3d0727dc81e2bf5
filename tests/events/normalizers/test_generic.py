"""Already-canonical events, the round trip through ``vigil normalize`` output, and detection exclusivity."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import EVENT_FIXTURES
from vigil.errors import NormalizeError
from vigil.events.batch import BatchNormalizer
from vigil.events.fields import content_id
from vigil.events.model import Event, encode_event
from vigil.events.normalize import normalizers
from vigil.events.normalizers.generic import FIELDS, GenericNormalizer

DIR = EVENT_FIXTURES / "generic"
MINE = ("eventgrid", "attestation", "telemetry", "generic")
MY_NORMALIZERS = frozenset({"eventgrid", "cloudevents", "attestation", "telemetry", "generic"})
SUB = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13"

#: one record of every other source format (reference/azure.md §1-§2), for exclusivity of detection
OTHER_FORMATS: dict[str, dict[str, Any]] = {
    "activity": {
        "time": "2026-11-24T09:41:07.5123344Z",
        "resourceId": f"/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/RG-CCTRAIN-WEU/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV-1",
        "operationName": "MICROSOFT.KEYVAULT/VAULTS/ACCESSPOLICIES/WRITE",
        "category": "Write",
        "resultType": "Success",
        "identity": {"claims": {"appid": "a", "ipaddr": "203.0.113.45"}},
        "properties": {"eventCategory": "Administrative"},
    },
    "keyvault": {
        "time": "2026-11-24T09:44:12.0871120Z",
        "resourceId": f"/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/RG-CCTRAIN-WEU/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV-1",
        "operationName": "KeyDecrypt",
        "category": "AuditEvent",
        "resultType": "Success",
        "identity": {"claim": {"oid": "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5f6e"}},
        "properties": {"httpStatusCode": 200},
    },
    "storage": {
        "time": "2026-11-24T09:51:03.2215540Z",
        "resourceId": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st/blobServices/default",
        "category": "StorageRead",
        "operationName": "GetBlob",
        "statusCode": 200,
        "callerIpAddress": "198.51.100.23:52144",
        "identity": {"type": "SAS"},
        "properties": {"accountName": "st"},
    },
    "sentinel-alert": {
        "TimeGenerated": "2026-11-24T09:47:31.118Z",
        "SystemAlertId": "2f6c1a7e-9b3d-4e21-8c5f-0a1b2c3d4e5f",
        "AlertName": "Key released to non-compliant attestation",
        "AlertSeverity": "High",
        "Entities": "[]",
        "Type": "SecurityAlert",
    },
    "sentinel-incident": {
        "eventUniqueId": "51a7c9e0-3b2d-4f18-9e6a-7c8d9e0f1a2b",
        "objectSchemaType": "Incident",
        "objectEventType": "Create",
        "workspaceId": "5c0de1a4-77b2-4e0f-9d6a-1b2c3d4e5f60",
        "object": {"id": "/subscriptions/x/incidents/y", "kind": "x", "properties": {"severity": "High"}},
    },
    "monitor-alert": {
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {"alertId": "/subscriptions/x/alerts/y", "firedDateTime": "2026-11-24T09:52:10Z"},
            "alertContext": {"claims": "{}", "operationName": "Microsoft.Network/networkInterfaces/write"},
        },
    },
}


def _reason(record: dict[str, Any]) -> str:
    with pytest.raises(NormalizeError) as err:
        GenericNormalizer().normalize(record)
    return err.value.reason


def _records(path: Path) -> list[Any]:
    """The records of a fixture file, expanded the way the batch layer expands them."""
    data = path.read_bytes()
    values = (
        [orjson.loads(line) for line in data.splitlines() if line.strip()]
        if path.suffix == ".jsonl"
        else [orjson.loads(data)]
    )
    out: list[Any] = []
    for value in values:
        items = value if type(value) is list else [value]
        for item in items:
            if type(item) is dict and type(item.get("records")) is list:
                out += item["records"]
            else:
                out.append(item)
    return out


def _detectors(record: dict[str, Any]) -> set[str]:
    return {name for name, cls in normalizers.items() if cls().detect(record)}


def _my_fixture_records() -> list[Any]:
    return [
        pytest.param(f"{p.parent.name}/{p.name}#{i}", rec, id=f"{p.parent.name}/{p.name}#{i}")
        for fmt in MINE
        for p in sorted((EVENT_FIXTURES / fmt).glob("*.json*"))
        for i, rec in enumerate(_records(p))
        if type(rec) is dict
    ]


def _all_good_events() -> list[tuple[str, Event]]:
    out = []
    for path in sorted(EVENT_FIXTURES.glob("*/good_*.json*")):
        result = BatchNormalizer("auto").body(path.read_bytes(), str(path))
        out += [(f"{path.parent.name}/{path.name}#{i}", ev) for i, ev in enumerate(result.events)]
    return out


def _params(pairs: list[tuple[str, Event]]) -> list[Any]:
    return [pytest.param(where, ev, id=where) for where, ev in pairs]


# -- canonical input ----------------------------------------------------------------------------------------


def test_canonical_lines_map_every_field() -> None:
    out = BatchNormalizer("auto").body((DIR / "good_canonical_events.jsonl").read_bytes(), "f")
    assert not out.dead
    eg, badge, tel = out.events
    assert eg.id == "eg:e3c1b2a4-6d5f-4e7a-9b8c-0d1e2f3a4b5c"
    assert eg.kind == "eventgrid"  # kind passes through
    assert eg.action == "microsoft.keyvault.keynewversioncreated"
    assert eg.time == datetime(2026, 11, 24, 10, 2, 44, 509123, tzinfo=UTC)
    assert eg.resource.type == "microsoft.keyvault/vaults"
    assert eg.resource.subscription == SUB
    assert eg.labels["object_type"] == "Key"
    assert eg.raw["data"]["ObjectType"] == "Key"

    assert badge.kind == "generic"
    assert badge.outcome == "failure" and badge.severity == "low"
    assert badge.actor.ip == "192.0.2.77" and badge.actor.type == "user" and badge.actor.name == "m.doe"
    line = orjson.loads((DIR / "good_canonical_events.jsonl").read_bytes().splitlines()[1])
    assert badge.id == content_id("gen:", line)  # no id: a hash of the content
    assert badge.id.startswith("gen:")

    assert tel.kind == "node.telemetry"
    assert tel.node.attested is True and tel.node.id == "node-a1"
    assert tel.raw["metrics"]["loss"] == 1.932


def test_generated_id_is_stable_and_key_order_free() -> None:
    rec = {"time": "2026-11-24T10:30:00Z", "kind": "generic", "action": "x.y", "labels": {"a": "1", "b": "2"}}
    shuffled = {
        "labels": {"b": "2", "a": "1"},
        "action": "x.y",
        "kind": "generic",
        "time": "2026-11-24T10:30:00Z",
    }
    assert GenericNormalizer().normalize(rec).id == GenericNormalizer().normalize(shuffled).id
    assert GenericNormalizer().normalize(dict(rec, action="x.z")).id != GenericNormalizer().normalize(rec).id


def test_epoch_time_is_accepted() -> None:
    ev = GenericNormalizer().normalize({"time": 1795513200, "kind": "generic", "action": "x"})
    assert ev.time == datetime.fromtimestamp(1795513200, UTC)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": "nope"}, "canonical event: unknown kind 'nope' - at `$.kind`"),
        ({"outcome": "maybe"}, "canonical event: Invalid enum value 'maybe' - at `$.outcome`"),
        ({"severity": "critical"}, "canonical event: Invalid enum value 'critical' - at `$.severity`"),
        (
            {"time": "2026-11-24T10:30:00"},
            "canonical event: time must carry a timezone (use Z for UTC) - at `$.time`",
        ),
        ({"time": "Tuesday"}, "canonical event: Invalid RFC3339 encoded datetime - at `$.time`"),
        ({"labels": {"site": 2}}, "canonical event: Expected `str`, got `int` - at `$.labels[...]`"),
        ({"actor": {"badge": "x"}}, "canonical event: Object contains unknown field `badge` - at `$.actor`"),
        (
            {"node": {"attested": "yes"}},
            "canonical event: Expected `bool | null`, got `str` - at `$.node.attested`",
        ),
        ({"action": None}, "canonical event: Expected `str`, got `null` - at `$.action`"),
        ({"action": ""}, "canonical event: action is empty - at `$.action`"),
        ({"id": ""}, "canonical event: id is empty - at `$.id`"),
        ({"raw": []}, "canonical event: Expected `object`, got `array` - at `$.raw`"),
    ],
)
def test_precise_reasons_name_the_field(changes: dict[str, Any], reason: str) -> None:
    rec = {"id": "gen:1", "time": "2026-11-24T10:30:00Z", "kind": "generic", "action": "badge.swipe"}
    rec.update(changes)
    assert _reason(rec) == reason


def test_bad_fixtures() -> None:
    out = BatchNormalizer("auto").body((DIR / "bad_kind_nope.json").read_bytes(), "f")
    (dead,) = out.dead
    assert dead.format == "generic"
    assert dead.reason == "canonical event: unknown kind 'nope' - at `$.kind`"
    out = BatchNormalizer("auto").body((DIR / "bad_fields.jsonl").read_bytes(), "f")
    assert len(out.dead) == 6 and not out.events


def test_detect() -> None:
    norm = GenericNormalizer()
    rec = {"time": "t", "kind": "generic", "action": "x"}
    assert norm.detect(rec)
    assert norm.detect(dict(rec, kind="nope"))  # refused later, with a reason
    assert not norm.detect(dict(rec, kind=3))
    assert not norm.detect({"time": "t", "kind": "generic"})
    assert not norm.detect({"kind": "generic", "action": "x"})
    assert not norm.detect(dict(rec, eventType="X"))  # any non-canonical key
    assert not norm.detect(dict(rec, schema="vigil.telemetry/1"))
    assert {
        "id",
        "time",
        "kind",
        "action",
        "outcome",
        "severity",
        "actor",
        "resource",
        "node",
        "labels",
        "raw",
    } == FIELDS
    assert GenericNormalizer.name == "generic"


# -- round trip: `vigil normalize` output fed back in gives the same event ----------------------------------


@pytest.mark.parametrize(("where", "event"), _params(_all_good_events()))
def test_round_trip_through_canonical_json(where: str, event: Event) -> None:
    line = orjson.loads(encode_event(event))
    assert _detectors(line) == {"generic"}, where
    again = GenericNormalizer().normalize(line)
    for field in ("id", "time", "kind", "action", "outcome", "severity", "actor", "resource", "node"):
        assert getattr(again, field) == getattr(event, field), (where, field)
    assert dict(again.labels) == dict(event.labels)
    assert orjson.loads(orjson.dumps(dict(again.raw))) == orjson.loads(orjson.dumps(dict(event.raw)))
    assert again == event
    assert encode_event(again) == encode_event(event)


def test_round_trip_covers_every_format_of_mine() -> None:
    kinds = {ev.kind for _, ev in _all_good_events()}
    assert {"eventgrid", "attestation", "node.telemetry", "generic"} <= kinds


def test_control_output_is_not_taken_for_an_event() -> None:
    out = BatchNormalizer("auto").body(
        (EVENT_FIXTURES / "eventgrid" / "good_validation_handshake.json").read_bytes(), "f"
    )
    (ctl,) = out.controls
    assert _detectors(orjson.loads(encode_event(ctl))) == set()


# -- exclusivity of detection -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(OTHER_FORMATS))
def test_my_formats_do_not_detect_other_formats(fmt: str) -> None:
    assert not (_detectors(OTHER_FORMATS[fmt]) & MY_NORMALIZERS)


@pytest.mark.parametrize(("where", "record"), _my_fixture_records())
def test_each_of_my_records_is_detected_by_exactly_one_normalizer(where: str, record: dict[str, Any]) -> None:
    found = _detectors(record)
    assert len(found) == 1 and found <= MY_NORMALIZERS, (where, found)
    expected = {
        "eventgrid": {"eventgrid", "cloudevents"},
        "attestation": {"attestation"},
        "telemetry": {"telemetry"},
        "generic": {"generic"},
    }[where.split("/", maxsplit=1)[0]]
    assert found <= expected, (where, found)

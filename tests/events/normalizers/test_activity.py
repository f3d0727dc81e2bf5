from __future__ import annotations

import orjson

from tests.conftest import EVENT_FIXTURES
from vigil.events.batch import BatchNormalizer
from vigil.events.normalizers.activity import ActivityLogNormalizer

SUB = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13"


def _fixture_events() -> list:  # type: ignore[type-arg]
    data = (EVENT_FIXTURES / "activity" / "good_envelope_keyvault_policy.json").read_bytes()
    out = BatchNormalizer("activity").body(data, "fixture")
    assert not out.dead
    return out.events


def test_reference_record_maps_every_field() -> None:
    ev = _fixture_events()[0]
    assert ev.kind == "azure.activity"
    assert ev.action == "microsoft.keyvault/vaults/accesspolicies/write"
    assert ev.outcome == "success"
    assert ev.severity == "informational"
    assert ev.time.isoformat() == "2026-11-24T09:41:07.512334+00:00"
    assert (
        ev.resource.id
        == f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.keyvault/vaults/kv-cctrain-weu"
    )
    assert ev.resource.type == "microsoft.keyvault/vaults"
    assert ev.resource.name == "kv-cctrain-weu"
    assert ev.resource.subscription == SUB
    assert ev.resource.group == "rg-cctrain-weu"
    assert ev.actor.id == "c4a1e2f3-0b9d-4c8e-a7f6-5d4c3b2a1f0e"
    assert ev.actor.name == "mallory@contoso-ml.example"
    assert ev.actor.type == "user"
    assert ev.actor.ip == "203.0.113.45"
    assert ev.actor.app_id == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert ev.actor.tenant == "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"
    assert ev.raw["properties"]["statusCode"] == "OK"
    assert ev.raw["durationMs"] == 0
    assert ev.id.startswith("act:" + format(int(ev.time.timestamp() * 1000), "012x"))  # time-ordered


def test_begin_record_of_the_same_operation_has_its_own_id_and_unknown_outcome() -> None:
    end, begin = _fixture_events()
    assert begin.outcome == "unknown"
    assert begin.id != end.id
    assert begin.raw["durationMs"] == "0"
    assert begin.severity == "informational"  # "Informational" spelling
    assert begin.actor.type == "serviceprincipal"  # appid but no name


def test_lines_fixture_traps() -> None:
    data = (EVENT_FIXTURES / "activity" / "good_lines_mixed.jsonl").read_bytes()
    run, keys, role = BatchNormalizer().body(data, "f").events
    assert (
        run.outcome == "success"
        and run.severity == "low"
        and run.actor.id == "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5f6e"
    )
    assert keys.action == "microsoft.storage/storageaccounts/listkeys/action"
    assert keys.outcome == "failure" and keys.severity == "medium"
    assert keys.resource.name == "stcctrainckpt"
    assert keys.actor.type == "serviceprincipal"
    assert role.resource.type == "microsoft.resources/subscriptions"
    assert role.time.isoformat() == "2026-11-24T09:02:00+00:00"
    assert role.actor.ip == "2001:db8::7"
    assert role.severity == "high"


def test_detect_is_specific() -> None:
    norm = ActivityLogNormalizer()
    rec = {"resourceId": "/subscriptions/s", "operationName": "x", "category": "Write"}
    assert norm.detect(rec)
    assert norm.detect({"resourceId": "r", "operationName": "x", "properties": {"eventCategory": "Policy"}})
    assert not norm.detect(dict(rec, category="AuditEvent"))
    assert not norm.detect(dict(rec, category="StorageRead"))
    assert not norm.detect({"operationName": "x", "category": "Write"})


def test_rest_form_operation_name_object() -> None:
    rec = {
        "time": "2026-11-24T10:00:00Z",
        "resourceId": f"/subscriptions/{SUB}",
        "operationName": {"value": "Microsoft.Resources/tags/write", "localizedValue": "Write tags"},
        "category": "Administrative",
    }
    (ev,) = BatchNormalizer().body(orjson.dumps(rec), "s").events
    assert ev.action == "microsoft.resources/tags/write"

"""Event Grid schema and CloudEvents 1.0 deliveries (reference/azure.md §3)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from tests.conftest import EVENT_FIXTURES
from vigil.errors import NormalizeError
from vigil.events.batch import BatchNormalizer, Result
from vigil.events.fields import hash_id
from vigil.events.model import Control, Event
from vigil.events.normalizers.eventgrid import CloudEventNormalizer, EventGridNormalizer

SUB = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13"
TENANT = "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"
VAULT_ID = (
    f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.keyvault/vaults/kv-cctrain-weu"
)
NIC_ID = f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.network/networkinterfaces/cvm-train-01-nic"
DIR = EVENT_FIXTURES / "eventgrid"


def _load(name: str) -> Any:
    return orjson.loads((DIR / name).read_bytes())


def _body(name: str, fmt: str = "auto") -> Result:
    out = BatchNormalizer(fmt).body((DIR / name).read_bytes(), name)
    assert not out.dead, [d.reason for d in out.dead]
    return out


def _event(result: Event | Control) -> Event:
    assert isinstance(result, Event)
    return result


def _reason(norm: EventGridNormalizer | CloudEventNormalizer, record: dict[str, Any]) -> str:
    with pytest.raises(NormalizeError) as err:
        norm.normalize(record)
    return err.value.reason


# -- Event Grid schema ------------------------------------------------------------------------------------


def test_keyvault_event_maps_every_field() -> None:
    (ev,) = _body("good_keyvault_key_new_version.json").events
    assert ev.id == "eg:e3c1b2a4-6d5f-4e7a-9b8c-0d1e2f3a4b5c"
    assert ev.kind == "eventgrid"
    assert ev.action == "microsoft.keyvault.keynewversioncreated"
    assert ev.time.isoformat() == "2026-11-24T10:02:44.509123+00:00"
    assert ev.outcome == "unknown"
    assert ev.severity is None
    assert ev.resource.id == VAULT_ID
    assert ev.resource.type == "microsoft.keyvault/vaults"
    assert ev.resource.name == "kv-cctrain-weu"
    assert ev.resource.subscription == SUB
    assert ev.resource.group == "rg-cctrain-weu"
    assert dict(ev.labels) == {
        "subject": "dek-llm-ckpt",
        "object_type": "Key",
        "object_name": "dek-llm-ckpt",
        "object_version": "9a8b7c6d5e4f40312a1b2c3d4e5f6a7b",
        "vault_name": "kv-cctrain-weu",
    }
    assert ev.actor.id is None and ev.actor.tenant is None
    assert ev.node.id is None
    assert ev.raw["data"]["EXP"] == 1827048164
    assert ev.raw["data"]["NBF"] is None


def test_validation_event_is_a_control_not_an_event() -> None:
    out = _body("good_validation_handshake.json")
    assert out.events == []
    (ctl,) = out.controls
    assert ctl.kind == "eventgrid.validation"
    assert ctl.id == "eg:1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
    assert ctl.details["validation_code"] == "8f3e2d1c-0b9a-4876-a5b4-c3d2e1f0a9b8"
    assert ctl.details["validation_url"].startswith("https://rp-westeurope.eventgrid.azure.net:553/")
    assert ctl.details["topic"].endswith("/providers/Microsoft.KeyVault/vaults/kv-cctrain-weu")


def test_validation_event_without_url_or_with_odd_case_type() -> None:
    (rec,) = _load("good_validation_handshake.json")
    del rec["data"]["validationUrl"]
    rec["eventType"] = "microsoft.eventgrid.subscriptionvalidationevent"
    ctl = EventGridNormalizer().normalize(rec)
    assert isinstance(ctl, Control)
    assert dict(ctl.details) == {
        "validation_code": "8f3e2d1c-0b9a-4876-a5b4-c3d2e1f0a9b8",
        "topic": rec["topic"],
    }


def test_validation_event_without_code_is_dead_lettered_with_reason() -> None:
    out = BatchNormalizer("auto").body((DIR / "bad_validation_without_code.json").read_bytes(), "f")
    assert not out.events and not out.controls
    (dead,) = out.dead
    assert dead.format == "eventgrid"
    assert dead.index == "[0]"
    assert dead.reason.startswith("data.validationCode: missing")
    (rec,) = _load("good_validation_handshake.json")
    rec["data"]["validationCode"] = 42
    assert "data.validationCode: expected a non-empty string, got int" in _reason(EventGridNormalizer(), rec)
    rec["data"] = None
    assert _reason(EventGridNormalizer(), rec).startswith("data.validationCode: missing")


def test_batch_delivery_resource_events_actor_outcome_and_deletion_control() -> None:
    out = _body("good_batch_delivery.json")
    write, delete, near_expiry, blob = out.events
    (deleted,) = out.controls

    assert write.action == "microsoft.resources.resourcewritesuccess"
    assert write.outcome == "success"
    assert write.resource.type == "microsoft.network/networksecuritygroups/securityrules"
    assert write.resource.name == "cvm-train-01-nsg/allow-any-in"
    assert write.resource.group == "rg-cctrain-weu"
    assert write.actor.id == "c4a1e2f3-0b9d-4c8e-a7f6-5d4c3b2a1f0e"
    assert write.actor.name == "mallory@contoso-ml.example"
    assert write.actor.type == "user"  # principalType from authorization.evidence
    assert write.actor.ip == "203.0.113.45"
    assert write.actor.app_id == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert write.actor.tenant == TENANT
    assert write.time.isoformat() == "2026-11-24T09:58:12.118000+00:00"

    # failure suffix; status "Failed"; httpRequest as JSON text; locks are extension resources
    assert delete.outcome == "failure"
    assert delete.resource.type == "microsoft.authorization/locks"
    assert delete.resource.name == "vigil-readonly"
    assert delete.actor.type == "serviceprincipal"
    assert delete.actor.id == "2b3c4d5e-6f70-4819-a2b3-c4d5e6f7a8b9"
    assert delete.actor.ip == "198.51.100.23"

    assert near_expiry.labels["object_type"] == "Secret"
    assert near_expiry.resource.id == VAULT_ID
    assert near_expiry.outcome == "unknown"

    # non-resource, non-Key Vault publisher: resource is the topic, the blob path stays in the subject label
    assert blob.action == "microsoft.storage.blobcreated"
    assert blob.resource.type == "microsoft.storage/storageaccounts"
    assert blob.resource.name == "stcctrainckpt"
    assert blob.labels["subject"].endswith("/blobs/run-0142/shard-0007.safetensors")
    assert "object_type" not in blob.labels

    assert deleted.kind == "eventgrid.deletion"
    assert deleted.id == "eg:3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7"
    assert deleted.details["event_subscription_id"].endswith("/eventSubscriptions/vigil-kv")
    assert "subject" not in deleted.details  # empty subject is absent, not null


@pytest.mark.parametrize(
    ("event_type", "status", "outcome"),
    [
        ("Microsoft.Resources.ResourceWriteSuccess", None, "success"),
        ("Microsoft.Resources.ResourceWriteFailure", None, "failure"),
        ("Microsoft.Resources.ResourceDeleteCancel", None, "failure"),
        ("Microsoft.Resources.ResourceActionSuccess", "Failed", "failure"),  # status is decisive
        ("Microsoft.Resources.ResourceWriteSuccess", "Canceled", "failure"),
        ("Microsoft.Resources.ResourceWriteSuccess", "Accepted", "success"),  # status not decisive: suffix
        ("Microsoft.KeyVault.KeyExpired", None, "unknown"),
        ("Microsoft.Storage.BlobDeleted", "Succeeded", "success"),
    ],
)
def test_outcome_rules(event_type: str, status: str | None, outcome: str) -> None:
    rec = copy.deepcopy(_load("good_batch_delivery.json")[0])
    rec["eventType"] = event_type
    if status is None:
        del rec["data"]["status"]
    else:
        rec["data"]["status"] = status
    assert _event(EventGridNormalizer().normalize(rec)).outcome == outcome


def test_resource_event_without_resource_uri_falls_back_to_subject_then_topic() -> None:
    rec = copy.deepcopy(_load("good_batch_delivery.json")[0])
    del rec["data"]["resourceUri"]
    ev = _event(EventGridNormalizer().normalize(rec))
    assert ev.resource.type == "microsoft.network/networksecuritygroups/securityrules"
    rec["subject"] = ""
    ev = _event(EventGridNormalizer().normalize(rec))
    assert ev.resource.id == f"/subscriptions/{SUB}"
    assert ev.resource.type == "microsoft.resources/subscriptions"
    assert "subject" not in ev.labels


def test_tenant_falls_back_to_data_tenant_id_and_broken_identity_parts_are_ignored() -> None:
    rec = copy.deepcopy(_load("good_batch_delivery.json")[0])
    rec["data"]["claims"] = "{not json"
    rec["data"]["httpRequest"] = 17
    rec["data"]["authorization"] = "nope"
    ev = _event(EventGridNormalizer().normalize(rec))
    assert ev.actor.tenant == TENANT
    assert ev.actor.id is None and ev.actor.ip is None
    rec["data"]["claims"] = '{"oid": "11111111-2222-4333-8444-555555555555", "tid": "other-tenant"}'
    ev = _event(EventGridNormalizer().normalize(rec))
    assert ev.actor.id == "11111111-2222-4333-8444-555555555555"
    assert ev.actor.tenant == "other-tenant"  # the claims win over data.tenantId


def test_precise_reasons() -> None:
    norm = EventGridNormalizer()
    (base,) = _load("good_keyvault_key_new_version.json")
    assert _reason(norm, {k: v for k, v in base.items() if k != "id"}).startswith("id: missing")
    assert _reason(norm, dict(base, id=["x"])).startswith("id: expected a string, got array")
    assert _reason(norm, dict(base, eventTime="yesterday")).startswith("eventTime: not an ISO 8601 timestamp")
    assert _reason(norm, {k: v for k, v in base.items() if k != "eventTime"}) == "eventTime: missing"
    assert _reason(norm, dict(base, eventType="")) == "eventType: empty"


def test_id_is_stable_and_data_may_be_absent() -> None:
    norm = EventGridNormalizer()
    (rec,) = _load("good_keyvault_key_new_version.json")
    a = _event(norm.normalize(rec))
    b = _event(norm.normalize(orjson.loads(orjson.dumps(rec))))
    assert a.id == b.id == "eg:" + rec["id"]
    assert a == b
    rec["data"] = "not an object"
    ev = _event(norm.normalize(rec))
    assert "object_type" not in ev.labels


def test_batch_with_broken_elements_keeps_the_good_ones() -> None:
    out = BatchNormalizer("auto").body((DIR / "bad_batch_with_two_broken.json").read_bytes(), "f")
    assert len(out.events) == 1
    assert [d.index for d in out.dead] == ["[1]", "[2]"]
    assert out.dead[0].reason.startswith("eventTime: not an ISO 8601 timestamp")
    assert out.dead[1].reason.startswith("id: missing")


def test_detect() -> None:
    norm = EventGridNormalizer()
    (rec,) = _load("good_keyvault_key_new_version.json")
    assert norm.detect(rec)
    assert norm.detect({"eventType": "X", "topic": "/t"})
    assert not norm.detect({"eventType": "X"})  # neither eventTime nor topic
    assert not norm.detect({"eventType": 5, "eventTime": "t"})
    assert not norm.detect(dict(rec, specversion="1.0"))
    assert not norm.detect(_load("good_cloudevent_resource_write.json"))


# -- CloudEvents ------------------------------------------------------------------------------------------


def test_cloudevent_resource_write_maps_every_field() -> None:
    (ev,) = _body("good_cloudevent_resource_write.json").events
    rec = _load("good_cloudevent_resource_write.json")
    assert ev.id == hash_id("ce:", f"{rec['source']}\x1f{rec['id']}")
    assert ev.id.startswith("ce:")
    assert ev.kind == "eventgrid"
    assert ev.action == "microsoft.resources.resourcewritesuccess"
    assert ev.time.isoformat() == "2026-11-24T09:52:06.010000+00:00"
    assert ev.outcome == "success"
    assert ev.resource.id == NIC_ID
    assert ev.resource.type == "microsoft.network/networkinterfaces"
    assert ev.resource.name == "cvm-train-01-nic"
    assert ev.actor.tenant == TENANT
    assert ev.actor.id is None
    assert ev.labels["subject"] == rec["subject"]
    assert ev.raw["id"] == rec["id"]
    assert ev.raw["data"]["correlationId"] == "6b1f0c2e-3a4d-4f59-8e71-90ab12cd34ef"


def test_cloudevent_ids_are_scoped_by_source() -> None:
    norm = CloudEventNormalizer()
    rec = _load("good_cloudevent_resource_write.json")
    a = _event(norm.normalize(rec))
    assert _event(norm.normalize(copy.deepcopy(rec))).id == a.id
    other = dict(rec, source=f"/subscriptions/{SUB}/resourceGroups/rg-other")
    assert _event(norm.normalize(other)).id != a.id


def test_cloudevent_lines_cancel_and_keyvault() -> None:
    cancel, key = _body("good_cloudevents_lines.jsonl").events
    assert cancel.action == "microsoft.resources.resourcewritecancel"
    assert cancel.outcome == "failure"
    assert key.resource.id == VAULT_ID
    assert key.labels["object_name"] == "dek-llm-ckpt"


def test_cloudevent_specversion_other_than_1_0_is_refused() -> None:
    out = BatchNormalizer("auto").body((DIR / "bad_cloudevent_specversion_03.json").read_bytes(), "f")
    (dead,) = out.dead
    assert dead.format == "cloudevents"
    assert dead.reason == "specversion: '0.3' is not supported (only CloudEvents '1.0')"
    rec = _load("good_cloudevent_resource_write.json")
    assert _reason(CloudEventNormalizer(), dict(rec, specversion=1.0)).startswith("specversion: 1.0 is not")


def test_cloudevent_precise_reasons() -> None:
    norm = CloudEventNormalizer()
    rec = _load("good_cloudevent_resource_write.json")
    assert _reason(norm, {k: v for k, v in rec.items() if k != "time"}) == "time: missing"
    assert _reason(norm, {k: v for k, v in rec.items() if k != "source"}) == "source: missing"
    assert _reason(norm, {k: v for k, v in rec.items() if k != "type"}) == "type: missing"
    assert _reason(norm, {k: v for k, v in rec.items() if k != "id"}).startswith("id: missing")


def test_cloudevent_validation_type_is_a_control_too() -> None:
    (val,) = _load("good_validation_handshake.json")
    rec = {
        "specversion": "1.0",
        "type": val["eventType"],
        "source": val["topic"],
        "id": val["id"],
        "time": val["eventTime"],
        "data": val["data"],
    }
    ctl = CloudEventNormalizer().normalize(rec)
    assert isinstance(ctl, Control)
    assert ctl.kind == "eventgrid.validation"
    assert ctl.details["validation_code"] == val["data"]["validationCode"]
    assert ctl.id.startswith("ce:")


def test_cloudevent_detect() -> None:
    norm = CloudEventNormalizer()
    assert norm.detect(_load("good_cloudevent_resource_write.json"))
    assert norm.detect({"specversion": "0.3"})
    assert not norm.detect(_load("good_keyvault_key_new_version.json")[0])


def test_forced_formats_by_name() -> None:
    assert len(_body("good_keyvault_key_new_version.json", "eventgrid").events) == 1
    assert len(_body("good_cloudevent_resource_write.json", "cloudevents").events) == 1
    assert EventGridNormalizer.name == "eventgrid"
    assert CloudEventNormalizer.name == "cloudevents"
    assert EventGridNormalizer.kind == CloudEventNormalizer.kind == "eventgrid"

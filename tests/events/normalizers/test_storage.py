"""Storage resource-log normalizer: field mapping, the traps of reference/azure.md §1.4, ids, errors."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import EVENT_FIXTURES
from vigil.errors import NormalizeError
from vigil.events.batch import BatchNormalizer
from vigil.events.model import Event, encode_event
from vigil.events.normalize import Dispatcher, normalizers
from vigil.events.normalizers.activity import ActivityLogNormalizer
from vigil.events.normalizers.keyvault import KeyVaultAuditNormalizer
from vigil.events.normalizers.storage import StorageLogNormalizer

SUB = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13"
TENANT = "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"
ACCOUNT_ID = f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.storage/storageaccounts/stcctrainckpt"
BLOB_SERVICE_ID = ACCOUNT_ID + "/blobservices/default"
FIXTURES = EVENT_FIXTURES / "storage"

# Activity Log record from reference/azure.md §1.2 (a listKeys on the same account): never a storage log.
ACTIVITY_RECORD: dict[str, Any] = {
    "time": "2026-11-24T09:41:07.5123344Z",
    "resourceId": ACCOUNT_ID.upper(),
    "operationName": "MICROSOFT.STORAGE/STORAGEACCOUNTS/LISTKEYS/ACTION",
    "category": "Action",
    "resultType": "Success",
    "resultSignature": "Succeeded.OK",
    "callerIpAddress": "203.0.113.45",
    "correlationId": "6b1f0c2e-3a4d-4f59-8e71-90ab12cd34ef",
    "identity": {"claims": {"upn": "mallory@contoso-ml.example"}},
    "properties": {"statusCode": "OK", "eventCategory": "Administrative"},
}


def _example() -> dict[str, Any]:
    """The record of the reference/azure.md §1.4 example, freshly decoded."""
    record: dict[str, Any] = orjson.loads((FIXTURES / "good_envelope_azure_md.json").read_bytes())["records"][
        0
    ]
    return record


def _mixed() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = orjson.loads((FIXTURES / "good_mixed_auth.json").read_bytes())["records"]
    return records


def _key_vault_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = orjson.loads(
        (EVENT_FIXTURES / "keyvault" / "good_envelope_azure_md.json").read_bytes()
    )["records"]
    return records


def _norm(record: dict[str, Any]) -> Event:
    return StorageLogNormalizer().normalize(record)


# -- the reference example, field by field -----------------------------------------------------------------


def test_reference_sas_read_maps_every_field() -> None:
    out = BatchNormalizer("storage").body((FIXTURES / "good_envelope_azure_md.json").read_bytes(), "st")
    assert not out.dead
    (ev,) = out.events
    assert ev.kind == "azure.storage"
    assert ev.action == "getblob"
    assert ev.outcome == "success"
    assert ev.severity is None
    assert ev.time == datetime(2026, 11, 24, 9, 51, 3, 221554, tzinfo=UTC)
    assert ev.resource.id == BLOB_SERVICE_ID
    assert ev.resource.type == "microsoft.storage/storageaccounts/blobservices"
    assert ev.resource.name == "stcctrainckpt/default"
    assert ev.resource.subscription == SUB
    assert ev.resource.group == "rg-cctrain-weu"
    assert ev.actor.ip == "198.51.100.23"  # port 52144 stripped
    assert ev.actor.type == "sas"
    assert (
        ev.actor.id is None and ev.actor.name is None and ev.actor.app_id is None and ev.actor.tenant is None
    )
    assert dict(ev.labels) == {"storage.account": "stcctrainckpt", "storage.service": "blob"}
    assert ev.id.startswith("st:") and len(ev.id) == 3 + 32
    assert ev.raw["callerIpAddress"] == "198.51.100.23:52144"  # raw untouched
    assert ev.raw["properties"]["responseBodySize"] == 2147483648
    assert ev.raw["statusText"] == "SASSuccess"


def test_labels_and_raw_are_read_only() -> None:
    ev = _norm(_example())
    with pytest.raises(TypeError):
        ev.labels["storage.account"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        ev.raw["statusCode"] = 500  # type: ignore[index]


def test_event_serialises_as_canonical_json() -> None:
    data = orjson.loads(encode_event(_norm(_example())))
    assert data["kind"] == "azure.storage"
    assert data["actor"] == {"type": "sas", "ip": "198.51.100.23"}
    assert data["labels"] == {"storage.account": "stcctrainckpt", "storage.service": "blob"}
    assert data["resource"]["type"] == "microsoft.storage/storageaccounts/blobservices"
    assert data["raw"]["identity"]["type"] == "SAS"


# -- auth types and requesters ------------------------------------------------------------------------------


def test_mixed_auth_fixture() -> None:
    out = BatchNormalizer("auto").body((FIXTURES / "good_mixed_auth.json").read_bytes(), "st")
    assert not out.dead
    mi_put, denied_put, key_delete, anon_get = out.events

    assert mi_put.action == "putblob" and mi_put.outcome == "success"
    assert mi_put.actor.type == "oauth"
    assert mi_put.actor.id == "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5f6e"
    assert mi_put.actor.app_id == "2b3c4d5e-6f70-4819-a2b3-c4d5e6f7a8b9"
    assert mi_put.actor.tenant == TENANT
    assert mi_put.actor.name is None
    assert mi_put.actor.ip == "10.40.2.15"

    assert denied_put.outcome == "failure"  # 403 AuthorizationPermissionMismatch
    assert denied_put.actor.name == "mallory@contoso-ml.example"
    assert denied_put.actor.id == "c4a1e2f3-0b9d-4c8e-a7f6-5d4c3b2a1f0e"
    assert denied_put.actor.app_id == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert denied_put.actor.type == "oauth"
    assert denied_put.actor.ip == "198.51.100.23"

    assert key_delete.action == "deleteblob" and key_delete.outcome == "success"
    assert key_delete.actor.type == "accountkey"
    assert key_delete.actor.id is None
    assert key_delete.actor.ip == "203.0.113.45"

    assert anon_get.actor.type == "anonymous"
    assert anon_get.outcome == "success"
    assert anon_get.actor.ip == "2001:db8::17"  # "[2001:db8::17]:55123"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ("SAS", "sas"),
        ("OAuth", "oauth"),
        ("AccountKey", "accountkey"),
        ("Anonymous", "anonymous"),
        ("Kerberos", "kerberos"),
        ("Account Key", "accountkey"),  # the docs' prose spelling
        ("SAS Key", "sas"),
        ("oauth", "oauth"),
        ("TrustedAccessSAS", "trustedaccesssas"),  # unknown spellings are kept, lower-cased
        ("", None),
        (7, None),
    ],
)
def test_identity_type_becomes_actor_type(auth: Any, expected: str | None) -> None:
    rec = _example()
    rec["identity"] = {"type": auth}
    assert _norm(rec).actor.type == expected


def test_requester_without_type_infers_a_user_or_an_application() -> None:
    rec = _example()
    rec["identity"] = {"requester": {"objectId": "o-1", "upn": "alice@contoso-ml.example"}}
    assert _norm(rec).actor.type == "user"
    rec["identity"] = {"requester": {"objectId": "o-2", "appId": "a-2"}}
    assert _norm(rec).actor.type == "serviceprincipal"


@pytest.mark.parametrize("identity", [None, "SAS", [], {"type": "SAS", "requester": "bogus"}])
def test_identity_of_the_wrong_shape_is_not_fatal(identity: Any) -> None:
    rec = _example()
    rec["identity"] = identity
    ev = _norm(rec)
    assert ev.actor.ip == "198.51.100.23"
    assert ev.actor.id is None


@pytest.mark.parametrize(
    ("caller", "ip"),
    [
        ("198.51.100.23:52144", "198.51.100.23"),
        ("198.51.100.23", "198.51.100.23"),
        ("[2001:db8::17]:443", "2001:db8::17"),
        ("2001:db8::17", "2001:db8::17"),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_caller_ip_port_is_stripped(caller: Any, ip: str | None) -> None:
    rec = _example()
    rec["callerIpAddress"] = caller
    assert _norm(rec).actor.ip == ip


# -- outcome -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (200, "SASSuccess", "success"),
        ("200", "Success", "success"),  # string status code
        (201, None, "success"),
        ("304", None, "success"),
        (403, "AuthorizationPermissionMismatch", "failure"),
        ("404", "ClientOtherError", "failure"),
        (503, "ServerBusy", "failure"),
        (200, "ClientOtherError", "success"),  # the code decides when it is a status
        (None, "Success", "success"),
        (None, "SASSuccess", "success"),
        (None, "AnonymousSuccess", "success"),
        (None, "success", "success"),
        (None, "AuthorizationPermissionMismatch", "failure"),
        (None, "SASAuthorizationError", "failure"),
        (None, "ThrottlingError", "failure"),
        ("n/a", "SASSuccess", "success"),  # unusable code falls through to the text
        (0, "AnonymousAuthorizationError", "failure"),
        (None, None, "unknown"),
        (None, "", "unknown"),
        (False, 5, "unknown"),
    ],
)
def test_outcome_from_status_code_then_status_text(code: Any, text: Any, expected: str) -> None:
    rec = _example()
    rec["statusCode"] = code
    rec["statusText"] = text
    assert _norm(rec).outcome == expected


# -- resource and labels ----------------------------------------------------------------------------------


def test_jsonl_blob_with_upper_case_ids_string_codes_and_a_queue_service() -> None:
    out = BatchNormalizer("auto").body((FIXTURES / "good_pt1h_blob.jsonl").read_bytes(), "PT1H.json")
    assert not out.dead
    listing, missing, message = out.events
    assert listing.raw["resourceId"].isupper()
    assert listing.resource.id == BLOB_SERVICE_ID
    assert listing.action == "listblobs" and listing.outcome == "success"
    assert missing.raw["category"] == "STORAGEREAD"
    assert missing.outcome == "failure"  # "404", ClientOtherError
    assert message.action == "putmessage"
    assert message.resource.type == "microsoft.storage/storageaccounts/queueservices"
    assert message.resource.name == "stcctrainckpt/default"
    assert dict(message.labels) == {"storage.account": "stcctrainckpt", "storage.service": "queue"}


def test_labels_fall_back_to_the_resource_id() -> None:
    rec = _example()
    del rec["properties"]
    assert dict(_norm(rec).labels) == {"storage.account": "stcctrainckpt", "storage.service": "blob"}
    rec["resourceId"] = ACCOUNT_ID.upper() + "/FILESERVICES/DEFAULT"
    assert dict(_norm(rec).labels) == {"storage.account": "stcctrainckpt", "storage.service": "file"}
    rec["properties"] = {"serviceType": "BLOB"}  # present values win, lower-cased
    assert dict(_norm(rec).labels) == {"storage.account": "stcctrainckpt", "storage.service": "blob"}


def test_no_labels_without_properties_or_a_storage_resource_id() -> None:
    rec = _example()
    rec["properties"] = ["not", "an", "object"]
    rec["resourceId"] = "stcctrainckpt"
    ev = _norm(rec)
    assert dict(ev.labels) == {}
    assert ev.resource.id == "stcctrainckpt"


# -- ids -----------------------------------------------------------------------------------------------------


def test_id_is_stable_for_the_same_record() -> None:
    rec = _example()
    assert _norm(rec).id == _norm(copy.deepcopy(rec)).id


def test_id_ignores_key_order() -> None:
    rec = _example()
    reordered = dict(reversed(list(rec.items())))
    assert list(reordered) != list(rec)
    assert _norm(reordered).id == _norm(rec).id


def test_id_is_the_request_id_with_operation_and_time() -> None:
    rec = _example()
    base = _norm(rec).id
    # descriptive fields do not change the identity of a request
    assert _norm(dict(rec, durationMs=9, callerIpAddress="203.0.113.1:1")).id == base
    for field, value in [
        ("correlationId", "a91b2c3d-601e-0042-1a2b-3c4d5e000001"),
        ("operationName", "GetBlobProperties"),
        ("time", "2026-11-24T09:51:03.2215541Z"),
    ]:
        assert _norm(dict(rec, **{field: value})).id != base, field


def test_all_fixture_records_have_distinct_ids() -> None:
    ids = [_norm(rec).id for rec in _mixed()] + [_norm(_example()).id]
    assert len(set(ids)) == len(ids)


def test_id_without_correlation_id_falls_back_to_identifying_fields() -> None:
    rec = _example()
    del rec["correlationId"]
    first = _norm(rec).id
    assert first.startswith("st:")
    assert _norm(copy.deepcopy(rec)).id == first
    assert first != _norm(_example()).id
    assert _norm(dict(rec, correlationId="")).id == first
    assert _norm(dict(rec, uri=rec["uri"].replace("shard-0007", "shard-0008"))).id != first
    assert _norm(dict(rec, callerIpAddress="203.0.113.1:1")).id != first


# -- malformed records ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("time", None, "time: missing"),
        ("time", "24/11/2026 09:51", "time: not an ISO 8601 timestamp: '24/11/2026 09:51'"),
        ("time", {"t": 1}, "time: expected a timestamp string, got dict"),
        ("resourceId", None, "resourceId: missing"),
        ("resourceId", "", "resourceId: empty"),
        ("resourceId", ["a"], "resourceId: expected a string, got array"),
        ("resourceId", 1.5, "resourceId: expected a string, got number"),
        ("operationName", None, "operationName: missing"),
        ("operationName", "", "operationName: empty"),
        ("operationName", {"value": "GetBlob"}, "operationName: expected a string, got object"),
    ],
)
def test_malformed_fields_give_precise_reasons(field: str, value: Any, reason: str) -> None:
    rec = _example()
    if value is None:
        del rec[field]
    else:
        rec[field] = value
    with pytest.raises(NormalizeError) as info:
        _norm(rec)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad_missing_time.json", "time: missing"),
        ("bad_resourceid_not_string.json", "resourceId: expected a string, got array"),
        ("bad_record_is_array.json", "expected a JSON object, got array"),
        ("bad_null_operation_name.json", "operationName: missing"),
    ],
)
def test_bad_fixtures_give_their_reason(name: str, reason: str) -> None:
    out = BatchNormalizer("auto").body((FIXTURES / name).read_bytes(), name)
    assert not out.events
    assert [d.reason for d in out.dead] == [reason]
    assert out.dead[0].index == "records[0]"


def test_bad_record_in_a_batch_is_dead_lettered_with_index_and_the_rest_come_through() -> None:
    out = BatchNormalizer("auto").body((FIXTURES / "bad_one_of_three.json").read_bytes(), "st")
    assert [ev.action for ev in out.events] == ["putblob", "deleteblob"]
    (dead,) = out.dead
    assert (dead.index, dead.format, dead.reason) == ("records[1]", "storage", "resourceId: missing")


def test_bad_line_in_a_jsonl_blob_is_dead_lettered_with_its_line() -> None:
    out = BatchNormalizer("auto").body(
        (FIXTURES / "bad_pt1h_with_broken_line.jsonl").read_bytes(), "PT1H.json"
    )
    assert [ev.action for ev in out.events] == ["listblobs", "putmessage"]
    (dead,) = out.dead
    assert dead.line == 2
    assert dead.format == "storage"
    assert dead.reason == "time: epoch value out of range: 1e+30"


# -- detection ------------------------------------------------------------------------------------------------


def test_registry_name_and_class_attributes() -> None:
    assert normalizers.get("storage") is StorageLogNormalizer
    assert StorageLogNormalizer.name == "storage"
    assert StorageLogNormalizer.kind == "azure.storage"
    assert StorageLogNormalizer.summary


@pytest.mark.parametrize(
    "category", ["StorageRead", "StorageWrite", "StorageDelete", "storagewrite", "STORAGEDELETE"]
)
def test_detect_accepts_the_three_categories_in_any_case(category: str) -> None:
    assert StorageLogNormalizer().detect({"category": category, "operationName": "PutBlob"})


@pytest.mark.parametrize(
    "record",
    [
        ACTIVITY_RECORD,
        {"category": "StorageRead"},  # no operationName
        {"statusText": "Success", "operationName": "GetBlob", "resourceId": BLOB_SERVICE_ID},  # no category
        {"category": "Transaction", "operationName": "GetBlob"},  # a metrics category
        {"category": "AuditEvent", "operationName": "GetBlob"},
        {"category": None, "operationName": "GetBlob"},
        {"Category": "StorageRead", "OperationName": "GetBlob"},  # StorageBlobLogs columns in Log Analytics
        {},
    ],
)
def test_detect_rejects_other_records(record: dict[str, Any]) -> None:
    assert not StorageLogNormalizer().detect(record)


def test_detect_rejects_key_vault_records_and_the_others_reject_storage_records() -> None:
    for rec in _key_vault_records():
        assert not StorageLogNormalizer().detect(rec)
    for rec in [_example(), *_mixed()]:
        assert not KeyVaultAuditNormalizer().detect(rec)
        assert not ActivityLogNormalizer().detect(rec)


def test_storage_record_with_an_activity_event_category_goes_to_exactly_one_normalizer() -> None:
    rec = dict(_example(), properties={"eventCategory": "Administrative"})
    assert not StorageLogNormalizer().detect(rec)
    assert ActivityLogNormalizer().detect(rec)


def test_every_good_record_is_claimed_by_exactly_one_registered_normalizer() -> None:
    instances = [cls() for _, cls in normalizers.items()]
    records: list[dict[str, Any]] = []
    for path in sorted(FIXTURES.glob("good_*.json*")):
        records += [
            dict(ev.raw) for ev in BatchNormalizer("storage").body(path.read_bytes(), path.name).events
        ]
    assert len(records) >= 8
    for rec in records:
        claimed = [n.name for n in instances if n.detect(rec)]
        assert claimed == ["storage"], (rec.get("operationName"), claimed)


def test_auto_detection_routes_storage_records_after_key_vault_records() -> None:
    dispatcher = Dispatcher("auto")
    kv = dispatcher.normalize(_key_vault_records()[0])
    assert dispatcher.last_format == "keyvault" and isinstance(kv, Event)
    ev = dispatcher.normalize(_example())
    assert dispatcher.last_format == "storage"
    assert isinstance(ev, Event) and ev.kind == "azure.storage"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("good_*.json*")), ids=lambda p: Path(p).name)
def test_good_fixtures_under_auto_detection(path: Path) -> None:
    out = BatchNormalizer("auto").body(path.read_bytes(), path.name)
    assert not out.dead, [d.reason for d in out.dead]
    assert out.events
    assert {ev.kind for ev in out.events} == {"azure.storage"}
    assert len({ev.id for ev in out.events}) == len(out.events)

"""Key Vault ``AuditEvent`` normalizer: field mapping, the traps of reference/azure.md §1.3, ids, errors."""

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
VAULT_ID = (
    f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/microsoft.keyvault/vaults/kv-cctrain-weu"
)
MIRID = f"/subscriptions/{SUB}/resourcegroups/rg-cctrain-weu/providers/Microsoft.Compute/virtualMachines/cvm-train-01"
FIXTURES = EVENT_FIXTURES / "keyvault"

# Activity Log record from reference/azure.md §1.2 (trimmed): must never be taken for a Key Vault record.
ACTIVITY_RECORD: dict[str, Any] = {
    "time": "2026-11-24T09:41:07.5123344Z",
    "resourceId": VAULT_ID.upper(),
    "operationName": "MICROSOFT.KEYVAULT/VAULTS/ACCESSPOLICIES/WRITE",
    "category": "Write",
    "resultType": "Success",
    "resultSignature": "Succeeded.OK",
    "callerIpAddress": "203.0.113.45",
    "correlationId": "6b1f0c2e-3a4d-4f59-8e71-90ab12cd34ef",
    "identity": {"claims": {"upn": "mallory@contoso-ml.example"}},
    "properties": {"statusCode": "OK", "eventCategory": "Administrative"},
}


def _example() -> list[dict[str, Any]]:
    """The two records of the reference/azure.md §1.3 example, freshly decoded."""
    records: list[dict[str, Any]] = orjson.loads((FIXTURES / "good_envelope_azure_md.json").read_bytes())[
        "records"
    ]
    return records


def _storage_record() -> dict[str, Any]:
    records: list[dict[str, Any]] = orjson.loads(
        (EVENT_FIXTURES / "storage" / "good_envelope_azure_md.json").read_bytes()
    )["records"]
    return records[0]


def _norm(record: dict[str, Any]) -> Event:
    return KeyVaultAuditNormalizer().normalize(record)


# -- the reference example, field by field -----------------------------------------------------------------


def test_managed_identity_decrypt_maps_every_field() -> None:
    out = BatchNormalizer("keyvault").body((FIXTURES / "good_envelope_azure_md.json").read_bytes(), "kv")
    assert not out.dead
    ev = out.events[0]
    assert ev.kind == "azure.keyvault"
    assert ev.action == "keydecrypt"
    assert ev.outcome == "success"
    assert ev.severity is None
    assert ev.time == datetime(2026, 11, 24, 9, 44, 12, 87112, tzinfo=UTC)
    assert ev.resource.id == VAULT_ID
    assert ev.resource.type == "microsoft.keyvault/vaults"
    assert ev.resource.name == "kv-cctrain-weu"
    assert ev.resource.subscription == SUB
    assert ev.resource.group == "rg-cctrain-weu"
    assert ev.actor.id == "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5f6e"
    assert ev.actor.type == "managedidentity"
    assert ev.actor.name is None
    assert ev.actor.ip == "10.40.2.15"
    assert ev.actor.app_id == "2b3c4d5e-6f70-4819-a2b3-c4d5e6f7a8b9"
    assert ev.actor.tenant is None
    assert ev.id.startswith("kv:") and len(ev.id) == 3 + 32
    assert dict(ev.labels) == {}
    # raw is the record untouched, reachable by rules, and read-only
    assert ev.raw["properties"]["httpStatusCode"] == 200
    assert ev.raw["durationMs"] == "11"
    assert ev.raw["identity"]["claim"]["xms_mirid"] == MIRID
    assert ev.raw["resourceId"].startswith("/SUBSCRIPTIONS/3F9A2C71")
    with pytest.raises(TypeError):
        ev.raw["operationName"] = "x"  # type: ignore[index]


def test_forbidden_secret_read_maps_every_field() -> None:
    ev = (
        BatchNormalizer("keyvault")
        .body((FIXTURES / "good_envelope_azure_md.json").read_bytes(), "kv")
        .events[1]
    )
    assert ev.action == "secretget"
    assert ev.outcome == "failure"  # resultType says Success; httpStatusCode 403 wins
    assert ev.raw["resultType"] == "Success"
    assert ev.time == datetime(2026, 11, 24, 9, 44, 19, 441020, tzinfo=UTC)
    assert ev.actor.id == "c4a1e2f3-0b9d-4c8e-a7f6-5d4c3b2a1f0e"
    assert ev.actor.name == "mallory@contoso-ml.example"
    assert ev.actor.type == "user"
    assert ev.actor.ip == "198.51.100.23"
    assert ev.actor.app_id == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert ev.resource.id == VAULT_ID
    assert (
        ev.raw["properties"]["requestUri"]
        == "https://kv-cctrain-weu.vault.azure.net/secrets/hf-token?api-version=7.6"
    )


def test_event_serialises_as_canonical_json() -> None:
    ev = _norm(_example()[1])
    data = orjson.loads(encode_event(ev))
    assert data["kind"] == "azure.keyvault"
    assert data["action"] == "secretget"
    assert data["outcome"] == "failure"
    assert data["actor"]["ip"] == "198.51.100.23"
    assert data["resource"]["name"] == "kv-cctrain-weu"
    assert data["raw"]["properties"]["httpStatusCode"] == 403
    assert data["time"] == "2026-11-24T09:44:19.441020Z"


# -- outcome: httpStatusCode first, then resultSignature, never a lone resultType Success -------------------


def test_forbidden_fixture_with_result_type_success_is_a_failure() -> None:
    out = BatchNormalizer("auto").body(
        (FIXTURES / "good_forbidden_resulttype_success.json").read_bytes(), "kv"
    )
    assert not out.dead
    (ev,) = out.events
    assert ev.raw["resultType"] == "Success"
    assert ev.raw["properties"]["httpStatusCode"] == 403
    assert ev.outcome == "failure"
    assert ev.actor.ip == "203.0.113.77"
    assert ev.actor.tenant == TENANT  # "tid" claim


@pytest.mark.parametrize(
    ("status", "signature", "result_type", "expected"),
    [
        (403, "OK", "Success", "failure"),  # httpStatusCode beats a contradicting signature
        (200, "Forbidden", "Failure", "success"),  # ... in both directions
        ("403", "OK", "Success", "failure"),  # numeric string
        ("401", None, None, "failure"),
        (204, None, None, "success"),
        (None, "OK", "Success", "success"),
        (None, "Unauthorized", "Success", "failure"),
        (None, "Forbidden", "Success", "failure"),
        (None, "NotFound", "Success", "failure"),
        (None, "TooManyRequests", "Success", "failure"),
        (None, "forbidden", None, "failure"),  # any case
        (None, "Created", None, "success"),
        (None, "429", "Success", "failure"),  # a numeric signature
        (None, 503, None, "failure"),
        ("not-a-status", "NotFound", None, "failure"),  # unusable status falls through to the signature
        (True, "OK", None, "success"),  # a boolean is not a status
        (None, None, "Success", "unknown"),  # a lone Success is exactly what failed calls say
        (None, "", "Success", "unknown"),
        (None, None, "Failure", "failure"),
        (None, "SomethingNew", "Success", "unknown"),
        (None, None, None, "unknown"),
    ],
)
def test_outcome_precedence(status: Any, signature: Any, result_type: Any, expected: str) -> None:
    rec = _example()[1]
    rec["properties"]["httpStatusCode"] = status
    if status is None:
        del rec["properties"]["httpStatusCode"]
    rec["resultSignature"] = signature
    rec["resultType"] = result_type
    assert _norm(rec).outcome == expected


def test_properties_of_the_wrong_shape_are_ignored_not_fatal() -> None:
    rec = _example()[1]
    rec["properties"] = "403"
    ev = _norm(rec)
    assert ev.outcome == "failure"  # from resultSignature Forbidden
    assert ev.raw["properties"] == "403"


# -- actor: identity.claim (singular), managed identity, IP ---------------------------------------------------


def test_managed_identity_caller_with_uri_claims() -> None:
    (ev,) = (
        BatchNormalizer("auto")
        .body((FIXTURES / "good_managed_identity_keyrelease.json").read_bytes(), "kv")
        .events
    )
    assert ev.action == "keyrelease"
    assert ev.outcome == "success"
    assert ev.actor.type == "managedidentity"
    assert ev.actor.id == "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5f6e"  # from the long objectidentifier URI claim
    assert ev.actor.tenant == TENANT  # from the long tenantid URI claim
    assert ev.actor.app_id == "2b3c4d5e-6f70-4819-a2b3-c4d5e6f7a8b9"
    assert ev.actor.ip == "10.40.2.15"
    assert ev.raw["properties"]["id"].endswith("/keys/dek-llm-ckpt/4c7a19e2b0d54f6e8a3b1c2d3e4f5a6b")


def test_claims_are_read_from_singular_claim() -> None:
    rec = _example()[1]
    assert "claims" not in rec["identity"]
    assert _norm(rec).actor.name == "mallory@contoso-ml.example"


def test_plural_claims_are_accepted_as_a_fallback() -> None:
    rec = _example()[1]
    rec["identity"] = {"claims": rec["identity"]["claim"]}
    ev = _norm(rec)
    assert ev.actor.name == "mallory@contoso-ml.example"
    assert ev.actor.id == "c4a1e2f3-0b9d-4c8e-a7f6-5d4c3b2a1f0e"


def test_caller_ip_wins_over_ipaddr_claim_and_claim_is_the_fallback() -> None:
    rec = _example()[1]
    rec["callerIpAddress"] = "203.0.113.9"
    assert _norm(rec).actor.ip == "203.0.113.9"
    del rec["callerIpAddress"]
    assert _norm(rec).actor.ip == "198.51.100.23"  # the ipaddr claim


@pytest.mark.parametrize("identity", [None, "bogus", [], {"claim": "not-a-dict"}, {}])
def test_identity_of_the_wrong_shape_leaves_only_the_ip(identity: Any) -> None:
    rec = _example()[1]
    rec["identity"] = identity
    ev = _norm(rec)
    assert ev.actor.ip == "198.51.100.23"
    assert ev.actor.id is None and ev.actor.name is None and ev.actor.type is None


def test_no_identity_and_no_ip_gives_an_empty_actor() -> None:
    rec = _example()[1]
    del rec["identity"]
    del rec["callerIpAddress"]
    ev = _norm(rec)
    assert ev.actor.id is None and ev.actor.ip is None and ev.actor.type is None


# -- case traps -----------------------------------------------------------------------------------------------


def test_upper_case_operation_and_category_and_mixed_case_id() -> None:
    out = BatchNormalizer("auto").body((FIXTURES / "good_mixed_operations.jsonl").read_bytes(), "kv")
    assert not out.dead
    secretlist, rotate, throttled, vaultput = out.events
    assert secretlist.raw["category"] == "auditevent"
    assert secretlist.action == "secretlist"
    assert secretlist.outcome == "success"  # httpStatusCode "200" as a string
    assert rotate.raw["category"] == "AUDITEVENT"
    assert rotate.action == "keyrotate"  # operationName "KEYROTATE"
    assert rotate.resource.id == VAULT_ID  # mixed-case id, same canonical id as the upper-case one
    assert rotate.actor.type == "serviceprincipal"
    assert throttled.outcome == "failure"
    assert vaultput.outcome == "failure"  # no httpStatusCode; resultSignature Unauthorized
    assert vaultput.actor.ip == "203.0.113.9" and vaultput.actor.id is None
    assert {ev.kind for ev in out.events} == {"azure.keyvault"}


# -- ids ------------------------------------------------------------------------------------------------------


def test_id_is_stable_for_the_same_record() -> None:
    a, b = _example()[0], copy.deepcopy(_example()[0])
    assert _norm(a).id == _norm(b).id
    assert _norm(a).id == _norm(a).id


def test_id_ignores_key_order() -> None:
    rec = _example()[0]
    reordered = dict(reversed(list(rec.items())))
    reordered["properties"] = dict(reversed(list(rec["properties"].items())))
    assert list(reordered) != list(rec)
    assert _norm(reordered).id == _norm(rec).id


def test_id_ignores_resource_id_case() -> None:
    rec = _example()[0]
    lowered = dict(rec, resourceId=rec["resourceId"].lower())
    assert _norm(lowered).id == _norm(rec).id


def test_the_two_example_records_have_different_ids() -> None:
    first, second = _example()
    assert _norm(first).id != _norm(second).id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time", "2026-11-24T09:44:12.0871121Z"),
        ("operationName", "KeyEncrypt"),
        ("correlationId", "11111111-2222-4333-8444-555555555555"),
        ("callerIpAddress", "10.40.2.16"),
        ("resultSignature", "Forbidden"),
        ("resourceId", VAULT_ID.replace("kv-cctrain-weu", "kv-other")),
    ],
)
def test_id_changes_with_each_identifying_field(field: str, value: str) -> None:
    rec = _example()[0]
    assert _norm(dict(rec, **{field: value})).id != _norm(rec).id


@pytest.mark.parametrize("prop", ["id", "requestUri"])
def test_id_changes_with_the_object_or_request_uri(prop: str) -> None:
    rec = _example()[0]
    other = copy.deepcopy(rec)
    other["properties"][prop] += "x"
    assert _norm(other).id != _norm(rec).id


def test_id_does_not_depend_on_descriptive_fields() -> None:
    rec = _example()[0]
    other = dict(rec, durationMs="999", resultDescription="retry")
    assert _norm(other).id == _norm(rec).id


# -- malformed records ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("time", None, "time: missing"),
        ("time", "yesterday at noon", "time: not an ISO 8601 timestamp: 'yesterday at noon'"),
        ("time", ["2026-11-24"], "time: expected a timestamp string, got list"),
        ("resourceId", None, "resourceId: missing"),
        ("resourceId", "", "resourceId: empty"),
        ("resourceId", 12345, "resourceId: expected a string, got number"),
        ("resourceId", {"id": "x"}, "resourceId: expected a string, got object"),
        ("operationName", None, "operationName: missing"),
        ("operationName", "", "operationName: empty"),
        ("operationName", ["SecretGet"], "operationName: expected a string, got array"),
        ("operationName", True, "operationName: expected a string, got boolean"),
    ],
)
def test_malformed_fields_give_precise_reasons(field: str, value: Any, reason: str) -> None:
    rec = _example()[0]
    if value is None:
        del rec[field]
    else:
        rec[field] = value
    with pytest.raises(NormalizeError) as info:
        _norm(rec)
    assert info.value.reason == reason


def test_bad_record_in_a_batch_is_dead_lettered_with_index_and_the_rest_come_through() -> None:
    out = BatchNormalizer("auto").body((FIXTURES / "bad_one_of_three.json").read_bytes(), "kv")
    assert [ev.action for ev in out.events] == ["secretlist", "secretget"]
    (dead,) = out.dead
    assert dead.index == "records[1]"
    assert dead.format == "keyvault"
    assert dead.reason == "resourceId: missing"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad_missing_time.json", "time: missing"),
        ("bad_resourceid_not_string.json", "resourceId: expected a string, got number"),
        ("bad_record_is_array.json", "expected a JSON object, got array"),
        ("bad_empty_operation_name.json", "operationName: empty"),
        ("bad_time_not_iso.json", "time: not an ISO 8601 timestamp: 'yesterday at noon'"),
    ],
)
def test_bad_fixtures_give_their_reason(name: str, reason: str) -> None:
    out = BatchNormalizer("auto").body((FIXTURES / name).read_bytes(), name)
    assert not out.events
    assert [d.reason for d in out.dead] == [reason]
    assert out.dead[0].index == "records[0]"


def test_truncated_jsonl_line_is_dead_lettered_and_neighbours_survive() -> None:
    out = BatchNormalizer("auto").body((FIXTURES / "bad_truncated_line.jsonl").read_bytes(), "kv")
    assert [ev.action for ev in out.events] == ["secretlist", "keyrotate"]
    (dead,) = out.dead
    assert dead.line == 2
    assert dead.reason.startswith("invalid JSON")


# -- detection ------------------------------------------------------------------------------------------------


def test_registry_name_and_class_attributes() -> None:
    assert normalizers.get("keyvault") is KeyVaultAuditNormalizer
    assert KeyVaultAuditNormalizer.name == "keyvault"
    assert KeyVaultAuditNormalizer.kind == "azure.keyvault"
    assert KeyVaultAuditNormalizer.summary


def test_detect_accepts_audit_events_in_any_case() -> None:
    norm = KeyVaultAuditNormalizer()
    for rec in _example():
        assert norm.detect(rec)
    assert norm.detect({"category": "auditevent", "operationName": "SecretGet"})
    assert norm.detect(
        {"category": "AUDITEVENT", "operationName": None}
    )  # bad value: detected, then explained


@pytest.mark.parametrize(
    "record",
    [
        ACTIVITY_RECORD,
        {"category": "AuditEvent"},  # no operationName
        {"operationName": "SecretGet"},  # no category
        {"category": 5, "operationName": "SecretGet"},
        {"category": ["AuditEvent"], "operationName": "SecretGet"},
        {"category": "Write", "operationName": "SecretGet"},
        {"Category": "AuditEvent", "OperationName": "SecretGet"},  # AzureDiagnostics / Log Analytics columns
        {},
    ],
)
def test_detect_rejects_other_records(record: dict[str, Any]) -> None:
    assert not KeyVaultAuditNormalizer().detect(record)


def test_detect_rejects_storage_records_and_storage_rejects_key_vault_records() -> None:
    assert not KeyVaultAuditNormalizer().detect(_storage_record())
    for rec in _example():
        assert not StorageLogNormalizer().detect(rec)
        assert not ActivityLogNormalizer().detect(rec)


def test_audit_event_with_an_activity_event_category_goes_to_exactly_one_normalizer() -> None:
    rec = dict(_example()[0], properties={"eventCategory": "Administrative"})
    assert not KeyVaultAuditNormalizer().detect(rec)
    assert ActivityLogNormalizer().detect(rec)


def _fixture_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(FIXTURES.glob("good_*.json*")):
        out = BatchNormalizer("keyvault").body(path.read_bytes(), path.name)
        records += [dict(ev.raw) for ev in out.events]
    return records


def test_every_good_record_is_claimed_by_exactly_one_registered_normalizer() -> None:
    instances = [cls() for _, cls in normalizers.items()]
    records = _fixture_records()
    assert len(records) >= 10
    for rec in records:
        claimed = [n.name for n in instances if n.detect(rec)]
        assert claimed == ["keyvault"], (rec.get("operationName"), claimed)


def test_auto_detection_routes_key_vault_records() -> None:
    dispatcher = Dispatcher("auto")
    for rec in _example():
        ev = dispatcher.normalize(rec)
        assert dispatcher.last_format == "keyvault"
        assert isinstance(ev, Event) and ev.kind == "azure.keyvault"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("good_*.json*")), ids=lambda p: Path(p).name)
def test_good_fixtures_under_auto_detection(path: Path) -> None:
    out = BatchNormalizer("auto").body(path.read_bytes(), path.name)
    assert not out.dead, [d.reason for d in out.dead]
    assert out.events
    assert {ev.kind for ev in out.events} == {"azure.keyvault"}
    assert len({ev.id for ev in out.events}) == len(out.events)

"""MAA-shaped attestation claims, bare and wrapped (reference/azure.md §4.1–§4.3)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.conftest import EVENT_FIXTURES
from vigil.errors import NormalizeError
from vigil.events.batch import BatchNormalizer
from vigil.events.fields import content_id
from vigil.events.normalizers.attestation import AttestationNormalizer

DIR = EVENT_FIXTURES / "attestation"
GUEST_MEASUREMENT = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)
TEE = "x-ms-isolation-tee"
MEASUREMENT = "x-ms-sevsnpvm-launchmeasurement"
DEBUG = "x-ms-sevsnpvm-is-debuggable"


def _load(name: str) -> Any:
    return orjson.loads((DIR / name).read_bytes())


def _lines(name: str) -> list[Any]:
    return [orjson.loads(line) for line in (DIR / name).read_bytes().splitlines() if line.strip()]


def _reason(record: dict[str, Any]) -> str:
    with pytest.raises(NormalizeError) as err:
        AttestationNormalizer().normalize(record)
    return err.value.reason


def test_guest_attestation_token_reads_nested_snp_claims() -> None:
    out = BatchNormalizer("auto").body((DIR / "good_guest_attestation_azurevm.json").read_bytes(), "f")
    assert not out.dead
    (ev,) = out.events
    assert ev.kind == "attestation"
    assert ev.action == "attestation.verify"
    assert ev.id == "att:b7e1c94d2a0f4e6b8d3c5a7f9e1b2d4c6a8f0e2d4b6c8a0e2f4d6b8c0a2e4f6d"
    assert ev.time == datetime.fromtimestamp(1795513200, UTC)
    assert ev.outcome == "success"
    assert ev.node.id == "5e2a9c14-7b3d-4f60-a1e2-9c8b7d6f5a43"  # x-ms-azurevm-vmid, lower-cased
    assert ev.node.attested is True
    assert ev.node.measurement == GUEST_MEASUREMENT
    assert dict(ev.labels) == {
        "attestation_type": "azurevm",
        "tee_type": "sevsnpvm",
        "compliance_status": "azure-compliant-cvm",
        "debuggable": "false",
        "policy_hash": "Zq4nV2c8pXy1Rt7WmKa0bL3eHf5sJd9uOgQi6TrNvYk",
        "issuer": "https://sharedweu.weu.attest.azure.net",
    }
    assert all(type(v) is str for v in ev.labels.values())
    assert ev.raw[TEE]["x-ms-sevsnpvm-vmpl"] == 0
    assert ev.actor.id is None and ev.resource.id is None and ev.severity is None


def test_sevsnpvm_token_reads_top_level_claims() -> None:
    ev = AttestationNormalizer().normalize(_load("good_sevsnpvm_top_level.json"))
    assert ev.id == "att:0d4f6a8c1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f"
    assert ev.node.attested is True  # azure-compliant-uvm and not debuggable
    assert ev.outcome == "success"
    assert ev.node.measurement is not None
    assert ev.node.measurement == ev.node.measurement.lower()
    assert ev.node.measurement.startswith("a4c6e8f0")
    assert ev.node.id is None  # no vmid, no vm-configuration in a raw SNP token
    assert ev.labels["attestation_type"] == "sevsnpvm"
    assert "tee_type" not in ev.labels
    assert ev.labels["compliance_status"] == "azure-compliant-uvm"
    assert ev.labels["debuggable"] == "false"
    assert ev.time == datetime.fromtimestamp(1795516800, UTC)


def test_nested_and_top_level_forms_of_the_same_claims_map_the_same() -> None:
    guest = _load("good_guest_attestation_azurevm.json")
    flat = {k: v for k, v in guest.items() if k != TEE}
    flat.update({k: v for k, v in guest[TEE].items() if k != "x-ms-attestation-type"})
    flat["x-ms-attestation-type"] = "sevsnpvm"
    a = AttestationNormalizer().normalize(guest)
    b = AttestationNormalizer().normalize(flat)
    assert a.node == b.node
    assert a.outcome == b.outcome
    assert a.labels["compliance_status"] == b.labels["compliance_status"]
    assert a.labels["debuggable"] == b.labels["debuggable"]


def test_nested_claim_wins_over_a_top_level_one() -> None:
    guest = _load("good_guest_attestation_azurevm.json")
    guest[DEBUG] = True  # a stray top-level claim must not override the TEE's own
    ev = AttestationNormalizer().normalize(guest)
    assert ev.labels["debuggable"] == "false"
    assert ev.node.attested is True


def test_debuggable_guest_is_not_attested() -> None:
    out = BatchNormalizer("auto").body((DIR / "good_debuggable_guest.json").read_bytes(), "f")
    assert not out.dead
    (ev,) = out.events
    assert ev.node.attested is False
    assert ev.outcome == "failure"
    assert ev.labels["debuggable"] == "true"
    assert ev.labels["compliance_status"] == "azure-compliant-cvm"
    assert ev.node.id == "8c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


@pytest.mark.parametrize(
    ("compliance", "debuggable", "attested"),
    [
        ("azure-compliant-cvm", False, True),
        ("azure-compliant-uvm", False, True),
        ("azure-compliant-cvm", None, False),  # a missing debug claim proves nothing
        ("azure-noncompliant-cvm", False, False),
        (None, False, False),
    ],
)
def test_bare_claims_attested_rule(compliance: str | None, debuggable: bool | None, attested: bool) -> None:
    rec = _load("good_sevsnpvm_top_level.json")
    for claim, value in (("x-ms-compliance-status", compliance), (DEBUG, debuggable)):
        if value is None:
            rec.pop(claim)
        else:
            rec[claim] = value
    ev = AttestationNormalizer().normalize(rec)
    assert ev.node.attested is attested
    assert ev.outcome == ("success" if attested else "failure")


def test_node_id_falls_back_to_vm_unique_id_nested_or_top_level() -> None:
    guest = _load("good_guest_attestation_azurevm.json")
    del guest["x-ms-azurevm-vmid"]
    assert AttestationNormalizer().normalize(guest).node.id == "5e2a9c14-7b3d-4f60-a1e2-9c8b7d6f5a43"
    snp = _load("good_sevsnpvm_top_level.json")
    snp["x-ms-runtime"]["vm-configuration"] = {"vmUniqueId": "AB12CD34-0000-4000-8000-000000000001"}
    assert AttestationNormalizer().normalize(snp).node.id == "ab12cd34-0000-4000-8000-000000000001"


def test_vigil_wrapper_verified_and_rejected() -> None:
    out = BatchNormalizer("auto").body((DIR / "good_vigil_results.jsonl").read_bytes(), "f")
    assert not out.dead
    ok, rejected = out.events
    assert ok.node.id == "node-a1"  # the wrapper's node id wins, kept as is
    assert ok.node.attested is True and ok.outcome == "success"
    assert ok.time == datetime(2026, 11, 24, 11, 0, 1, tzinfo=UTC)  # wrapper time, not iat
    assert ok.labels["result"] == "verified"
    assert ok.id == "att:0d4f6a8c1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f"
    assert ok.raw["claims"]["x-ms-sevsnpvm-vmpl"] == 0

    assert rejected.node.id == "node-b7"
    assert rejected.node.attested is False and rejected.outcome == "failure"
    assert rejected.labels["result"] == "rejected"
    assert rejected.labels["reason"] == "launch measurement not in the allow-list"
    assert rejected.node.measurement == "ff" * 48
    # no jti: the id is a hash of the whole record
    assert rejected.id == content_id("att:", _lines("good_vigil_results.jsonl")[1])


def test_wrapper_verdict_wins_over_the_claims() -> None:
    ok, _ = _lines("good_vigil_results.jsonl")
    ok["claims"][DEBUG] = True
    ok["result"] = "verified"
    assert AttestationNormalizer().normalize(ok).node.attested is True
    ok["result"] = "rejected"
    del ok["time"]
    ev = AttestationNormalizer().normalize(ok)
    assert ev.node.attested is False
    assert ev.time == datetime.fromtimestamp(ok["claims"]["iat"], UTC)  # iat when the wrapper has no time


def test_id_is_stable_for_redelivery() -> None:
    rec = _load("good_sevsnpvm_top_level.json")
    del rec["jti"]
    a = AttestationNormalizer().normalize(rec)
    shuffled = dict(reversed(list(copy.deepcopy(rec).items())))
    b = AttestationNormalizer().normalize(shuffled)
    assert a.id == b.id
    assert a.id.startswith("att:")
    rec["iat"] += 1
    assert AttestationNormalizer().normalize(rec).id != a.id


def test_precise_reasons_for_malformed_claims() -> None:
    snp = _load("good_sevsnpvm_top_level.json")
    assert _reason(dict(snp, **{MEASUREMENT: "zz" + "0" * 94})) == f"{MEASUREMENT}: not hex (found 'z')"
    assert _reason(dict(snp, **{MEASUREMENT: "ab" * 32})) == (
        f"{MEASUREMENT}: expected 96 hex digits (SHA-384), got 64"
    )
    assert _reason(dict(snp, **{MEASUREMENT: 12})) == f"{MEASUREMENT}: expected a hex string, got int"
    assert _reason(dict(snp, iat="1795516800")) == "iat: expected epoch seconds (a number), got str"
    assert _reason(dict(snp, iat=True)) == "iat: expected epoch seconds (a number), got bool"
    no_iat = {k: v for k, v in snp.items() if k != "iat"}
    assert _reason(no_iat).startswith("iat: missing")
    assert _reason(dict(snp, **{DEBUG: "false"})) == f"{DEBUG}: expected a boolean, got str"
    assert _reason(dict(snp, **{"x-ms-compliance-status": 1})) == (
        "x-ms-compliance-status: expected a string, got int"
    )
    assert _reason(dict(snp, jti=7)) == "jti: expected a string, got int"
    guest = _load("good_guest_attestation_azurevm.json")
    assert _reason(dict(guest, **{TEE: "sevsnpvm"})) == f"{TEE}: expected an object, got str"
    guest[TEE]["x-ms-attestation-type"] = 3
    assert _reason(guest) == f"{TEE}.x-ms-attestation-type: expected a string, got int"


def test_precise_reasons_for_malformed_wrappers() -> None:
    ok, _ = _lines("good_vigil_results.jsonl")
    assert _reason(dict(ok, result="maybe")) == "result: expected 'verified' or 'rejected', got 'maybe'"
    assert _reason({k: v for k, v in ok.items() if k != "result"}) == (
        "result: expected 'verified' or 'rejected', got missing"
    )
    assert _reason(dict(ok, result={"a": 1})).startswith("result: expected")
    assert _reason(dict(ok, node_id=5)) == "node_id: expected a string, got int"
    assert _reason(dict(ok, reason=["x"])) == "reason: expected a string, got list"
    assert _reason(dict(ok, time="soon")).startswith("time: not an ISO 8601 timestamp")


def test_bad_fixtures_each_name_their_claim() -> None:
    out = BatchNormalizer("auto").body((DIR / "bad_claims.jsonl").read_bytes(), "f")
    assert not out.events
    assert [d.reason.split(":")[0] for d in out.dead] == ["iat", "result", TEE, DEBUG]
    assert all(d.format == "attestation" for d in out.dead)


def test_detect() -> None:
    norm = AttestationNormalizer()
    assert norm.detect(_load("good_guest_attestation_azurevm.json"))
    assert norm.detect(_load("good_sevsnpvm_top_level.json"))
    assert norm.detect({TEE: {}})
    assert norm.detect({"claims": {"x-ms-attestation-type": "sevsnpvm"}, "result": "rejected"})
    assert norm.detect({"claims": {TEE: {}}})
    # Entra claims (Event Grid resource events, Activity Log identity) are not attestation claims
    assert not norm.detect({"claims": {"oid": "x", "appid": "y"}})
    assert not norm.detect({"claims": "x-ms-attestation-type"})
    assert not norm.detect({"iss": "https://sharedweu.weu.attest.azure.net", "jti": "x"})
    assert AttestationNormalizer.name == "attestation"
    assert AttestationNormalizer.kind == "attestation"

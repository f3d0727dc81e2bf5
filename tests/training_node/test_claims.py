"""The attestation policy shared by the local service and the MAA verifier, and the MAA claim shapes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.platform.local.tokens import TokenIssuer
from vigil.training_node.claims import (
    AttestationError,
    AttestationPolicy,
    SnpFacts,
    facts_from_claims,
    facts_from_report,
    report_claims,
    verify_maa_token,
)
from vigil.training_node.evidence import SoftwareTee
from vigil.training_node.snp import AttestationReport, TcbVersion

from .support import GOOD_MEASUREMENT, HOST_DATA, MIN_TCB, TCB, UNKNOWN_MEASUREMENT, run

MAA = "https://sharedweu.weu.attest.azure.net"


@pytest.fixture(scope="module")
def maa() -> TokenIssuer:
    return TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), MAA)


@pytest.fixture
def policy() -> AttestationPolicy:
    return AttestationPolicy.build([GOOD_MEASUREMENT.hex().upper()], MIN_TCB, [HOST_DATA])


@pytest.fixture
def snp_claims(tee: SoftwareTee) -> dict[str, Any]:
    report = AttestationReport.parse(run(tee.report(bytes(64))).report)
    return report_claims(report) | {"x-ms-compliance-status": "azure-compliant-cvm"}


def facts(**changes: Any) -> SnpFacts:
    values: dict[str, Any] = {
        "measurement": GOOD_MEASUREMENT.hex(),
        "host_data": HOST_DATA.hex(),
        "debuggable": False,
        "migration_allowed": False,
        "vmpl": 0,
        "tcb": TCB,
    }
    return SnpFacts(**(values | changes))


def test_the_policy_is_built_from_hex_or_bytes_and_refuses_nonsense() -> None:
    policy = AttestationPolicy.build([GOOD_MEASUREMENT], TcbVersion(1, 0, 1, 1))
    assert policy.allowed_measurements == {GOOD_MEASUREMENT.hex()} and policy.allowed_host_data is None
    with pytest.raises(ValueError, match="empty"):
        AttestationPolicy.build([], MIN_TCB)
    with pytest.raises(ValueError, match="48 bytes or 96 hex digits"):
        AttestationPolicy.build(["abc"], MIN_TCB)
    with pytest.raises(ValueError, match="32 bytes or 64 hex digits"):
        AttestationPolicy.build([GOOD_MEASUREMENT], MIN_TCB, [b"short"])
    with pytest.raises(ValueError, match="min_tcb needs exactly"):
        AttestationPolicy.build([GOOD_MEASUREMENT], {"bootloader": 1})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"debuggable": True}, "debug policy bit set"),
        ({"migration_allowed": True}, "migration agent allowed by policy"),
        ({"vmpl": 2}, "VMPL 2, expected 0"),
        ({"tcb": TcbVersion(4, 1, 22, 208)}, "TCB component microcode 208 below minimum 209"),
        ({"tcb": TcbVersion(2, 9, 99, 255)}, "TCB component bootloader 2 below minimum 3"),
        ({"measurement": UNKNOWN_MEASUREMENT.hex()}, "launch measurement not in the allow-list"),
        ({"host_data": "00" * 32}, "host data not in the allow-list"),
    ],
)
def test_each_check_names_what_failed(
    policy: AttestationPolicy, changes: dict[str, Any], reason: str
) -> None:
    policy.check_platform(facts())
    policy.check_identity(facts())
    with pytest.raises(AttestationError) as caught:
        policy.check_platform(facts(**changes))
        policy.check_identity(facts(**changes))
    assert caught.value.reason == reason and caught.value.code == "attestation_failed"


def test_allowances_and_the_policy_hash(policy: AttestationPolicy) -> None:
    lenient = AttestationPolicy.build([GOOD_MEASUREMENT], MIN_TCB, allow_debug=True, allow_migration=True)
    lenient.check_platform(facts(debuggable=True, migration_allowed=True))
    lenient.check_identity(facts(host_data="00" * 32))  # no host-data allow-list
    assert policy.hash == AttestationPolicy.build([GOOD_MEASUREMENT], MIN_TCB, [HOST_DATA]).hash
    assert policy.hash != lenient.hash and len(policy.hash) == 43


def test_report_claims_use_maa_names_and_types(tee: SoftwareTee) -> None:
    report = AttestationReport.parse(run(tee.report(b"\x01" * 64)).report)
    claims = report_claims(report)
    assert claims["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == GOOD_MEASUREMENT.hex()
    assert claims["x-ms-sevsnpvm-reportdata"] == "01" * 64 and len(claims["x-ms-sevsnpvm-reportid"]) == 64
    assert claims["x-ms-sevsnpvm-is-debuggable"] is False and claims["x-ms-sevsnpvm-smt-allowed"] is True
    assert (claims["x-ms-sevsnpvm-snpfw-svn"], claims["x-ms-sevsnpvm-microcode-svn"]) == (22, 213)
    assert len(claims["x-ms-sevsnpvm-familyId"]) == 32
    assert facts_from_claims(claims) == facts_from_report(report)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("x-ms-sevsnpvm-launchmeasurement", "zz" * 48),
        ("x-ms-sevsnpvm-launchmeasurement", None),
        ("x-ms-sevsnpvm-hostdata", "00" * 31),
        ("x-ms-sevsnpvm-is-debuggable", "false"),
        ("x-ms-sevsnpvm-vmpl", True),
        ("x-ms-sevsnpvm-microcode-svn", "213"),
        ("x-ms-sevsnpvm-migration-allowed", None),
    ],
)
def test_malformed_or_missing_claims_are_refused(snp_claims: dict[str, Any], claim: str, value: Any) -> None:
    broken = {k: v for k, v in snp_claims.items() if k != claim}
    if value is not None:
        broken[claim] = value
    with pytest.raises(AttestationError, match=f"missing or malformed claim {claim}"):
        facts_from_claims(broken)
    with pytest.raises(AttestationError, match="malformed TCB claims"):
        facts_from_claims(snp_claims | {"x-ms-sevsnpvm-tee-svn": 256})


def test_a_sevsnpvm_token_and_an_azurevm_token_both_verify(
    maa: TokenIssuer, policy: AttestationPolicy, snp_claims: dict[str, Any]
) -> None:
    keys = {MAA: maa.jwks()}
    top = snp_claims | {"x-ms-ver": "1.0", "x-ms-runtime": {"client-payload": {"nonce": "n1"}}}
    verified = verify_maa_token(
        maa.issue(top, 600), issuers=[MAA + "/"], jwks=keys, policy=policy, nonce="n1"
    )
    assert verified.issuer == MAA
    nested = {
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": "azurevm",
        "x-ms-azurevm-vmid": "5E2A9C14-7B3D-4F60-A1E2-9C8B7D6F5A43",
        "x-ms-isolation-tee": copy.deepcopy(snp_claims),
        "x-ms-runtime": {"client-payload": {"nonce": "n2"}},
    }
    verify_maa_token(maa.issue(nested, 600), issuers=[MAA], jwks=keys, policy=policy, nonce="n2")
    with pytest.raises(AttestationError, match="nonce does not match"):
        verify_maa_token(maa.issue(nested, 600), issuers=[MAA], jwks=keys, policy=policy, nonce="n3")
    debuggable = top | {"x-ms-sevsnpvm-is-debuggable": True}
    with pytest.raises(AttestationError, match="debug policy bit set"):
        verify_maa_token(maa.issue(debuggable, 600), issuers=[MAA], jwks=keys, policy=policy)
    with pytest.raises(AttestationError, match=r"x-ms-ver is not 1\.0"):
        verify_maa_token(maa.issue(snp_claims, 600), issuers=[MAA], jwks=keys, policy=policy)
    tpm = {"x-ms-ver": "1.0", "x-ms-attestation-type": "tpm"}
    with pytest.raises(AttestationError, match="not a SEV-SNP attestation"):
        verify_maa_token(maa.issue(tpm, 600), issuers=[MAA], jwks=keys, policy=policy)


def test_only_rs256_may_be_allowed(maa: TokenIssuer, policy: AttestationPolicy) -> None:
    token = maa.issue({"x-ms-ver": "1.0"}, 600)
    for algorithms in ((), ("RS256", "HS256"), ("none",)):
        with pytest.raises(ValueError, match="RS256 only"):
            verify_maa_token(
                token, issuers=[MAA], jwks={MAA: maa.jwks()}, policy=policy, algorithms=algorithms
            )
    with pytest.raises(AttestationError, match="no JWKS for the issuer"):
        verify_maa_token(token, issuers=[MAA], jwks={}, policy=policy)
    with pytest.raises(AttestationError, match="malformed token"):
        verify_maa_token("not.a.token", issuers=[MAA], jwks={}, policy=policy)

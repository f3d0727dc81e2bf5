"""The local attestation service end to end, and one test per row F1–F10 of reliability.md's matrix.

Evidence comes from the software TEE over a test AMD hierarchy (RSA-2048 ARK/ASK, made once per
session); tokens go to the real local key vault. Nothing of ours is replaced by a double.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.training_node.support import (
    GOOD_MEASUREMENT,
    HOST_DATA,
    MIN_TCB,
    TCB,
    UNKNOWN_MEASUREMENT,
    make_amd,
    make_tee,
    public_pem,
    run,
)
from vigil.detectors.engine import Detector
from vigil.events.normalizers.attestation import AttestationNormalizer
from vigil.events.normalizers.platform import PlatformNormalizer
from vigil.platform.errors import InvalidError, ReleaseDeniedError, UnavailableError
from vigil.platform.events import CollectingObserver, PlatformEvent
from vigil.platform.keyvault import KeyOp
from vigil.platform.local.attestation import (
    AttestationError,
    LocalAttestationService,
    attestation_record,
    verify_maa_token,
)
from vigil.platform.local.keyvault import LocalKeyVault, unwrap_with_material
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.release import unwrap_as_recipient
from vigil.platform.local.tokens import JwksTokenVerifier, TokenIssuer
from vigil.rules.loader import load_rules
from vigil.training_node.azure_cvm import AzureCvmEvidence
from vigil.training_node.evidence import EvidenceBundle, SoftwareAmd, SoftwareTee, bind_report_data
from vigil.training_node.sev_guest import SevGuestEvidence
from vigil.training_node.snp import AttestationReport, TcbVersion, guest_policy, sign_report

from .conftest import ISSUER

PACK = Path(__file__).resolve().parents[3] / "rules"
YEAR = 365 * 86400.0
SIGNATURE_REASONS = {"report signature invalid", "report is not signed by a VCEK"}


@pytest.fixture(scope="session")
def amd(tmp_path_factory: pytest.TempPathFactory) -> SoftwareAmd:
    return make_amd(tmp_path_factory.mktemp("amd"))


@pytest.fixture(scope="session")
def foreign_amd(tmp_path_factory: pytest.TempPathFactory) -> SoftwareAmd:
    """Another root: a chain that is valid in itself but does not lead to the pinned ARK."""
    return make_amd(tmp_path_factory.mktemp("foreign-amd"))


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(load_rules([PACK]).rules)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    service: LocalAttestationService
    observer: CollectingObserver
    clock: Clock
    tee: SoftwareTee
    key: rsa.RSAPrivateKey
    issuer: TokenIssuer

    @property
    def pem(self) -> bytes:
        return public_pem(self.key)

    def evidence(
        self, tee: SoftwareTee | None = None, node_id: str | None = None
    ) -> tuple[str, EvidenceBundle]:
        nonce = self.service.new_nonce(node_id)
        return nonce, run((tee or self.tee).report(bind_report_data(nonce, self.pem)))

    def attest(self, bundle: EvidenceBundle, nonce: str, node_id: str = "node-a") -> str:
        return run(self.service.attest(bundle, nonce, self.pem, node_id=node_id))

    def reason(self, bundle: EvidenceBundle, nonce: str, node_id: str = "node-a") -> str:
        """The rejection reason; also checks that the rejection was recorded, with that reason."""
        before = len(self.observer.events)
        with pytest.raises(AttestationError) as caught:
            self.attest(bundle, nonce, node_id)
        event = self.observer.events[-1]
        assert len(self.observer.events) == before + 1
        assert (event.kind, event.outcome, event.details["reason"]) == (
            "platform.attestation.verify",
            "denied",
            caught.value.reason,
        )
        return caught.value.reason

    def resign(self, bundle: EvidenceBundle, **changes: Any) -> EvidenceBundle:
        """The bundle's report with ``changes``, validly signed again by the chip's VCEK."""
        key, _ = self.tee.amd.vcek(self.tee.chip_id, TCB)
        report = replace(AttestationReport.parse(bundle.report), **changes)
        return replace(bundle, report=sign_report(report, key).pack())


def make_env(issuer: TokenIssuer, amd: SoftwareAmd, key: rsa.RSAPrivateKey, **options: Any) -> Env:
    clock, observer = Clock(), CollectingObserver()
    service = LocalAttestationService(
        issuer,
        root_pem=amd.ark_pem,
        allowed_measurements=[GOOD_MEASUREMENT],
        allowed_host_data=[HOST_DATA],
        min_tcb=MIN_TCB,
        observer=observer,
        clock=clock,
        **options,
    )
    return Env(service, observer, clock, make_tee(amd), key, issuer)


@pytest.fixture
def env(token_issuer: TokenIssuer, amd: SoftwareAmd, node_a_key: rsa.RSAPrivateKey) -> Env:
    return make_env(token_issuer, amd, node_a_key)


RELEASE_POLICY = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": ISSUER,
            "allOf": [
                {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": GOOD_MEASUREMENT.hex()},
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
            ],
        }
    ],
}


@pytest.fixture
def vault(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[LocalKeyVault]:
    vault = LocalKeyVault(
        tmp_path / "vault.db", MasterKey.generate(), verifier=JwksTokenVerifier({ISSUER: token_issuer.jwks()})
    )
    run(vault.create_key("vigil", "dataset", exportable=True, release_policy=RELEASE_POLICY))
    run(vault.grant("vigil", "node-a", "dataset", {KeyOp.RELEASE}))
    yield vault
    vault.close()


def findings(detector: Detector, event: PlatformEvent) -> set[str]:
    normalized = AttestationNormalizer().normalize(attestation_record(event))
    detector.reset()
    return {f.rule for f in detector.process(normalized) if f.rule.startswith("att.")}


# --- the success path ---------------------------------------------------------------------------------


def test_attest_then_release_gives_the_node_its_data_key(
    env: Env, vault: LocalKeyVault, detector: Detector
) -> None:
    data_key = b"\x42" * 32
    wrapped = run(vault.wrap("vigil", "dataset", data_key))
    nonce, bundle = env.evidence(node_id="node-a")
    token = env.attest(bundle, nonce)
    claims = JwksTokenVerifier({ISSUER: env.issuer.jwks()}).verify(token).claims
    assert claims["x-ms-attestation-type"] == "sevsnpvm" and claims["x-ms-ver"] == "1.0"
    assert claims["x-ms-compliance-status"] == "azure-compliant-uvm"
    assert claims["x-ms-sevsnpvm-launchmeasurement"] == GOOD_MEASUREMENT.hex()
    assert claims["x-ms-sevsnpvm-hostdata"] == HOST_DATA.hex() and claims["x-ms-sevsnpvm-vmpl"] == 0
    assert claims["x-ms-sevsnpvm-is-debuggable"] is False and claims["x-ms-sevsnpvm-guestsvn"] == 1
    assert claims["x-ms-sevsnpvm-reportdata"] == bind_report_data(nonce, env.pem).hex()
    assert claims["x-ms-runtime"]["client-payload"] == {"nonce": nonce}
    assert claims["x-vigil-node-id"] == "node-a" and claims["x-ms-policy-hash"] == env.service.policy.hash
    assert claims["exp"] - claims["iat"] == 3600
    released = run(vault.release("node-a", "dataset", token, env.pem))  # the vault, unchanged
    material = unwrap_as_recipient(released.wrapped, env.key)
    assert unwrap_with_material(material, wrapped) == data_key
    event = env.observer.events[-1]
    assert (event.kind, event.principal, event.outcome, event.details["result"]) == (
        "platform.attestation.verify",
        "node-a",
        "success",
        "verified",
    )
    assert event.details["jti"] == claims["jti"] and len(event.details["key"]) == 64
    assert "x-ms-runtime" not in event.details["claims"] and token not in json.dumps(event.details)
    assert event.details["claims"]["jti"] == claims["jti"] and "iss" not in event.details["claims"]
    assert PlatformNormalizer().normalize(event.to_record()).action == "platform.attestation.verify"
    normalized = AttestationNormalizer().normalize(attestation_record(event))
    assert normalized.outcome == "success" and normalized.node is not None
    assert (normalized.node.id, normalized.node.attested) == ("node-a", True)
    assert normalized.node.measurement == GOOD_MEASUREMENT.hex() and normalized.id == "att:" + claims["jti"]
    assert findings(detector, event) == set()


def test_configuration_is_checked_at_construction(token_issuer: TokenIssuer, amd: SoftwareAmd) -> None:
    common: dict[str, Any] = {"allowed_measurements": [GOOD_MEASUREMENT], "min_tcb": MIN_TCB}
    with pytest.raises(ValueError, match="self-signed ARK"):
        LocalAttestationService(token_issuer, root_pem=amd.ask_pem, **common)
    with pytest.raises(ValueError, match="empty"):
        LocalAttestationService(token_issuer, root_pem=amd.ark_pem, allowed_measurements=[], min_tcb=MIN_TCB)
    service = LocalAttestationService(token_issuer, root_pem=amd.ark_pem, max_pending_nonces=2, **common)
    service.new_nonce()
    service.new_nonce()
    with pytest.raises(UnavailableError, match="too many outstanding"):
        service.new_nonce()
    assert "PRIVATE" not in repr(service) and len(service.ark_fingerprint) == 64


def test_an_observer_that_cannot_record_means_no_token(env: Env) -> None:
    class Broken:
        async def record(self, event: PlatformEvent) -> None:
            raise UnavailableError("audit log unavailable")

    env.service._observer = Broken()
    nonce, bundle = env.evidence()
    with pytest.raises(UnavailableError):
        env.attest(bundle, nonce)
    with pytest.raises(InvalidError, match="node_id"):
        run(env.service.attest(bundle, nonce, env.pem, node_id=""))


# --- F1–F10 -------------------------------------------------------------------------------------------


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    head = part(json.dumps(header).encode()) + "." + part(json.dumps(claims).encode())
    return head + "." + part(signature)


def test_f1_alg_none_and_hs256_confusion_tokens_are_rejected_and_release_nothing(
    env: Env, vault: LocalKeyVault
) -> None:
    nonce, bundle = env.evidence()
    claims = jwt.decode(env.attest(bundle, nonce), options={"verify_signature": False})
    none = _forge({"alg": "none", "typ": "JWT"}, claims, b"")
    head = _forge({"alg": "HS256", "typ": "JWT", "kid": env.issuer.kid}, claims, b"").rsplit(".", 1)[0]
    secret = env.issuer.jwks()["keys"][0]["n"].encode()  # the public key, as an HMAC key
    pem_secret = public_pem(env.key)
    for key in (secret, pem_secret):
        mac = hmac.new(key, head.encode(), hashlib.sha256).digest()
        confused = head + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")
        for token in (none, confused):
            with pytest.raises(ReleaseDeniedError, match="unsupported algorithm"):
                run(vault.release("node-a", "dataset", token, env.pem))
            with pytest.raises(AttestationError, match="unsupported algorithm"):
                verify_maa_token(
                    token, issuers=[ISSUER], jwks={ISSUER: env.issuer.jwks()}, policy=env.service.policy
                )


def test_f2_a_nonce_is_single_use_issued_here_fresh_and_for_its_node(
    env: Env, token_issuer: TokenIssuer, amd: SoftwareAmd
) -> None:
    nonce, bundle = env.evidence()
    env.attest(bundle, nonce)
    assert env.reason(bundle, nonce) == "nonce unknown or already used"
    invented = "never-issued-by-the-service"
    forged = run(env.tee.report(bind_report_data(invented, env.pem)))
    assert env.reason(forged, invented) == "nonce unknown or already used"
    nonce, bundle = env.evidence()
    env.clock.now += 300
    assert env.reason(bundle, nonce) == "nonce expired"
    nonce, bundle = env.evidence(node_id="node-b")
    assert env.reason(bundle, nonce, node_id="node-a") == "nonce was issued to another node"
    assert env.reason(bundle, nonce, node_id="node-b") == "nonce unknown or already used"  # burnt
    # a nonce spent on evidence that failed a later check is spent too
    nonce, debug = env.evidence(env.tee.with_config(policy=guest_policy(debug=True)))
    assert env.reason(debug, nonce) == "debug policy bit set"
    good = run(env.tee.report(bind_report_data(nonce, env.pem)))
    assert env.reason(good, nonce) == "nonce unknown or already used"
    # a restarted service knows no old nonce: a replay across a restart fails closed
    nonce, bundle = env.evidence()
    restarted = make_env(token_issuer, amd, env.key)
    assert restarted.reason(bundle, nonce) == "nonce unknown or already used"


def test_f3_report_data_must_bind_this_nonce_and_this_key_and_freshness_is_mandatory(
    env: Env, node_b_key: rsa.RSAPrivateKey, token_issuer: TokenIssuer, amd: SoftwareAmd
) -> None:
    nonce, _ = env.evidence()
    other_key = run(env.tee.report(bind_report_data(nonce, public_pem(node_b_key))))
    assert env.reason(other_key, nonce) == "report_data does not bind the nonce and node key"
    other_nonce = run(env.tee.report(bind_report_data(env.service.new_nonce(), env.pem)))
    assert env.reason(other_nonce, nonce) == "report_data does not bind the nonce and node key"
    zeros = run(env.tee.report(bytes(64)))
    assert env.reason(zeros, nonce) == "report_data does not bind the nonce and node key"
    env.attest(run(env.tee.report(bind_report_data(nonce, env.pem))), nonce)  # not burnt by the above
    for ttl in (0, -1, 301, float("inf")):
        with pytest.raises(ValueError, match="freshness is not optional"):
            make_env(token_issuer, amd, env.key, nonce_ttl=ttl)


def test_f4_a_debuggable_guest_is_refused_and_pages(
    env: Env, token_issuer: TokenIssuer, amd: SoftwareAmd, vault: LocalKeyVault, detector: Detector
) -> None:
    debuggable = env.tee.with_config(policy=guest_policy(debug=True))
    nonce, bundle = env.evidence(debuggable)
    assert env.reason(bundle, nonce) == "debug policy bit set"
    event = env.observer.events[-1]
    assert event.details["claims"]["x-ms-sevsnpvm-is-debuggable"] is True
    assert findings(detector, event) == {"att.debuggable-guest"}
    lenient = make_env(token_issuer, amd, env.key, allow_debug=True)  # a debug node for development
    nonce, bundle = lenient.evidence(debuggable)
    token = lenient.attest(bundle, nonce)
    assert jwt.decode(token, options={"verify_signature": False})["x-ms-sevsnpvm-is-debuggable"] is True
    with pytest.raises(ReleaseDeniedError, match="x-ms-sevsnpvm-is-debuggable"):
        run(vault.release("node-a", "dataset", token, env.pem))
    with pytest.raises(AttestationError, match="debug policy bit set"):
        verify_maa_token(token, issuers=[ISSUER], jwks={ISSUER: env.issuer.jwks()}, policy=env.service.policy)


def test_f5_tcb_minimums_per_component_and_the_vcek_tcb(env: Env) -> None:
    for component in ("bootloader", "tee", "snp", "microcode"):
        low = replace(TCB, **{component: MIN_TCB[component] - 1})
        nonce, bundle = env.evidence(env.tee.with_config(tcb=low))
        expected = f"TCB component {component} {MIN_TCB[component] - 1} below minimum {MIN_TCB[component]}"
        assert env.reason(bundle, nonce) == expected
    higher = replace(TCB, microcode=TCB.microcode + 1).to_raw()
    nonce, bundle = env.evidence()
    claims_more = env.resign(bundle, reported_tcb=higher, current_tcb=higher)  # VCEK issued for TCB
    assert env.reason(claims_more, nonce) == "VCEK TCB does not match the reported TCB"
    nonce, bundle = env.evidence()
    behind = env.resign(bundle, current_tcb=replace(TCB, snp=21).to_raw())
    assert env.reason(behind, nonce) == "reported TCB exceeds the current TCB"
    # COMMITTED != CURRENT: an uncommitted firmware update can still be rolled back
    uncommitted = "committed TCB or firmware differs from the current one"
    for changes in (
        {"committed_tcb": replace(TCB, snp=TCB.snp - 1).to_raw()},
        {"committed_build": 20},
        {"committed_minor": 54},
    ):
        nonce, bundle = env.evidence()
        assert env.reason(env.resign(bundle, **changes), nonce) == uncommitted


def test_f5_guest_svn_minimum_and_uncommitted_firmware_by_policy(
    token_issuer: TokenIssuer, amd: SoftwareAmd, node_a_key: rsa.RSAPrivateKey
) -> None:
    strict = make_env(token_issuer, amd, node_a_key, min_guest_svn=2)
    nonce, bundle = strict.evidence()  # the image's GUEST_SVN is 1
    assert strict.reason(bundle, nonce) == "guest SVN 1 below minimum 2"
    nonce, bundle = strict.evidence(strict.tee.with_config(guest_svn=2))
    assert strict.attest(bundle, nonce)


def test_f6_identity_measurement_host_data_vmpl_chip_and_signer(env: Env, detector: Detector) -> None:
    cases: list[tuple[SoftwareTee, str]] = [
        (env.tee.with_config(measurement=UNKNOWN_MEASUREMENT), "launch measurement not in the allow-list"),
        (env.tee.with_config(host_data=bytes(32)), "host data not in the allow-list"),
        (env.tee.with_config(vmpl=1), "VMPL 1, expected 0"),
        (env.tee.with_config(policy=guest_policy(migrate_ma=True)), "migration agent allowed by policy"),
    ]
    no_smt = make_env(env.issuer, env.tee.amd, env.key, allow_smt=False)
    nonce, bundle = no_smt.evidence(no_smt.tee.with_config(policy=guest_policy(smt=True)))
    assert no_smt.reason(bundle, nonce) == "SMT allowed by policy"
    nonce, bundle = no_smt.evidence(no_smt.tee.with_config(policy=guest_policy(smt=False)))
    assert no_smt.attest(bundle, nonce)
    for tee, reason in cases:
        nonce, bundle = env.evidence(tee)
        assert env.reason(bundle, nonce) == reason
        if reason.startswith("launch measurement"):
            assert findings(detector, env.observer.events[-1]) == {
                "att.verification-failed",
                "att.unknown-measurement",
            }
    for changes, reason in (
        ({"chip_id": b"\x01" * 64}, "chip id does not match the VCEK"),
        ({"signer_info": 0b10}, "chip id does not match the VCEK"),  # MASK_CHIP_ID
        ({"signer_info": 7 << 2}, "report is not signed by a VCEK"),  # SIGNING_KEY none
    ):
        nonce, bundle = env.evidence()
        assert env.reason(env.resign(bundle, **changes), nonce) == reason


def test_f7_the_chain_must_lead_to_the_pinned_ark_and_be_valid_now(
    env: Env, foreign_amd: SoftwareAmd
) -> None:
    foreign = make_tee(foreign_amd, chip_id=env.tee.chip_id)
    nonce, bundle = env.evidence(foreign)
    assert env.reason(bundle, nonce) == "certificate chain does not lead to the pinned ARK"
    certs = bundle.cert_chain_pem.split(b"-----END CERTIFICATE-----\n")
    without_root = replace(
        bundle,
        cert_chain_pem=certs[0] + b"-----END CERTIFICATE-----\n" + certs[1] + b"-----END CERTIFICATE-----\n",
    )
    assert env.reason(without_root, nonce) == "ASK is not signed by the pinned ARK"
    wrong_ask = replace(
        bundle,
        cert_chain_pem=certs[0] + b"-----END CERTIFICATE-----\n" + env.tee.amd.ask_pem + env.tee.amd.ark_pem,
    )
    assert env.reason(wrong_ask, nonce) == "VCEK is not signed by the ASK"
    assert env.reason(replace(bundle, cert_chain_pem=b"garbage"), nonce) == "malformed certificate chain"
    assert env.reason(replace(bundle, cert_chain_pem=env.tee.amd.ark_pem), nonce).startswith(
        "certificate chain must be"
    )
    env.clock.now += 8 * YEAR  # past the VCEK's seven years
    nonce, bundle = env.evidence()
    assert env.reason(bundle, nonce) == "VCEK certificate expired or not yet valid"
    env.clock.now -= 8 * YEAR + 3 * 86400  # before the ARK existed
    nonce, bundle = env.evidence()
    assert env.reason(bundle, nonce) == "ARK certificate expired or not yet valid"


def test_f8_maa_issuer_jku_claim_level_and_compliance(env: Env, issuer_key: rsa.RSAPrivateKey) -> None:
    nonce, bundle = env.evidence()
    claims = jwt.decode(env.attest(bundle, nonce), options={"verify_signature": False})
    snp = {k: v for k, v in claims.items() if k not in ("iss", "iat", "nbf", "exp", "jti")}
    trusted = {"issuers": [ISSUER], "jwks": {ISSUER: env.issuer.jwks()}, "policy": env.service.policy}
    verify_maa_token(env.issuer.issue(snp, 600), **trusted)
    other = TokenIssuer(issuer_key, "https://attacker.attest.azure.net")
    with pytest.raises(AttestationError, match="untrusted issuer"):
        verify_maa_token(other.issue(snp, 600), **trusted)
    now = int(time.time())
    payload = snp | {"iss": ISSUER, "iat": now, "nbf": now, "exp": now + 600}
    headers = {"kid": env.issuer.kid, "jku": "https://attacker.example/certs"}
    with pytest.raises(AttestationError, match="jku is not the issuer's /certs"):
        verify_maa_token(jwt.encode(payload, issuer_key, algorithm="RS256", headers=headers), **trusted)
    nested_only = {"x-ms-ver": "1.0", "x-ms-attestation-type": "sevsnpvm", "x-ms-isolation-tee": snp}
    with pytest.raises(AttestationError, match="compliance status missing"):
        verify_maa_token(env.issuer.issue(nested_only, 600), **trusted)
    top_level_azurevm = snp | {"x-ms-attestation-type": "azurevm", "x-ms-isolation-tee": {}}
    with pytest.raises(AttestationError, match="not a SEV-SNP attestation"):
        verify_maa_token(env.issuer.issue(top_level_azurevm, 600), **trusted)
    no_status = {k: v for k, v in snp.items() if k != "x-ms-compliance-status"}
    with pytest.raises(AttestationError, match="compliance status missing"):
        verify_maa_token(env.issuer.issue(no_status, 600), **trusted)
    expired = env.issuer.issue(snp, 600, now=time.time() - 7200)
    with pytest.raises(AttestationError, match="expired"):
        verify_maa_token(expired, **trusted)
    no_exp = jwt.encode(
        {k: v for k, v in payload.items() if k != "exp"},
        issuer_key,
        algorithm="RS256",
        headers={"kid": env.issuer.kid},
    )
    with pytest.raises(AttestationError, match="malformed token"):
        verify_maa_token(no_exp, **trusted)
    no_iat = jwt.encode(
        {k: v for k, v in payload.items() if k != "iat"},
        issuer_key,
        algorithm="RS256",
        headers={"kid": env.issuer.kid},
    )
    with pytest.raises(AttestationError, match="malformed token"):
        verify_maa_token(no_iat, **trusted)
    verify_maa_token(
        jwt.encode(payload, issuer_key, algorithm="RS256", headers={"kid": env.issuer.kid}), **trusted
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_f9_unreachable_maa_or_kds_fails_closed(env: Env) -> None:
    nonce, bundle = env.evidence()
    azure = replace(bundle, runtime_data=b"{}", provider="azure-cvm")
    maa = AzureCvmEvidence(maa_url=f"http://127.0.0.1:{_closed_port()}", timeout=2)
    with pytest.raises(httpx.ConnectError):
        run(maa.maa_token(azure, nonce=nonce))
    guest = SevGuestEvidence(kds_url=f"http://127.0.0.1:{_closed_port()}", timeout=2)
    with pytest.raises(httpx.ConnectError):
        run(guest._chain(AttestationReport.parse(bundle.report)))
    assert guest._cache == {}  # nothing half-fetched is kept


def _flip_all(env: Env, flips_per_byte: int) -> tuple[int, int]:
    nonce, bundle = env.evidence()
    rng = random.Random(1184)
    accepted = rejected = 0
    for index in range(len(bundle.report)):
        for _ in range(flips_per_byte):
            mutant = bytearray(bundle.report)
            mutant[index] ^= rng.randrange(1, 256)
            try:
                run(
                    env.service.attest(
                        replace(bundle, report=bytes(mutant)), nonce, env.pem, node_id="node-a"
                    )
                )
            except AttestationError as exc:
                assert exc.reason in SIGNATURE_REASONS, (index, exc.reason)
                rejected += 1
            else:
                accepted += 1
    env.attest(bundle, nonce)  # the original still verifies: the mutants failed on their own bytes
    return accepted, rejected


def test_f10_every_byte_flipped_three_ways_is_rejected(env: Env) -> None:
    accepted, rejected = _flip_all(env, flips_per_byte=3)
    assert (accepted, rejected) == (0, 3 * 1184)


def test_rejections_before_the_signature_carry_no_report_claims(env: Env, detector: Detector) -> None:
    nonce, bundle = env.evidence(env.tee.with_config(policy=guest_policy(debug=True)))
    tampered = bytearray(bundle.report)
    tampered[0x200] ^= 1  # in the reserved, signed range: the signature no longer matches
    assert env.reason(replace(bundle, report=bytes(tampered)), nonce) == "report signature invalid"
    event = env.observer.events[-1]
    assert event.details["claims"] == {"x-ms-attestation-type": "sevsnpvm"}
    # unverified bytes claiming DEBUG do not page as a debuggable guest: only as a failed attestation
    assert findings(detector, event) == {"att.verification-failed"}
    assert env.reason(replace(bundle, report=bundle.report[:-1]), nonce) == "malformed report"
    assert TcbVersion.from_raw(AttestationReport.parse(bundle.report).reported_tcb) == TCB

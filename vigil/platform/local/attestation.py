"""The local attestation service: SEV-SNP evidence in, an MAA-shaped token out; and a verifier for MAA.

:class:`LocalAttestationService` does for the embedded platform what Microsoft Azure Attestation does for
Azure (``../shared/reference/azure.md`` §4): a node asks for a nonce, puts SHA-512(nonce ‖ its ephemeral
public key DER) in REPORT_DATA (:func:`~vigil.training_node.evidence.bind_report_data`), and presents the
report with its VCEK → ASK → ARK chain. The checks run in this order, and the first failure is the reason:

1. chain: the ARK pinned by SHA-256 fingerprint (a chain may carry an ARK, which must be that one), ASK
   signed by the ARK and VCEK by the ASK, each certificate within its validity period;
2. report signature: signed by a VCEK (SIGNING_KEY 0), ECDSA P-384 SHA-384 over 0x000–0x29F, strict
   (:func:`~vigil.training_node.snp.report_signature_valid`);
3. freshness and binding: REPORT_DATA equals the binding of this nonce and this node key, and the nonce
   was issued here, is unexpired, is bound to this node when it was asked for one, and unused; it is
   consumed now, whatever follows (a nonce is never good for two reports);
4. platform: DEBUG bit off unless allowed (MIGRATE_MA likewise), VMPL as configured, every REPORTED_TCB
   component ≥ its minimum (per component, never as one integer);
5. VCEK: its TCB extensions equal REPORTED_TCB, REPORTED_TCB does not exceed CURRENT_TCB, CHIP_ID
   equals its hwID (a masked chip id fails);
6. identity: MEASUREMENT in the allow-list, HOST_DATA in its allow-list when one is set.

Checks 4 and 6 are :class:`~vigil.training_node.claims.AttestationPolicy`, shared with
:func:`~vigil.training_node.claims.verify_maa_token` (re-exported here), so a local token and a real MAA
token are held to the same rules. Success issues a token through the
:class:`~vigil.platform.local.tokens.TokenIssuer` with MAA's ``sevsnpvm`` claims at the top level
(§4.3) and ``x-ms-runtime.keys`` = the node key as an encryption JWK, which is what the local key vault's
release wraps to, unchanged.

Every outcome is a :class:`~vigil.platform.events.PlatformEvent` ``platform.attestation.verify``
(``success`` or ``denied``, with the reason), recorded before the token is returned.
:func:`attestation_record` turns it into the result wrapper the attestation normalizer reads, so the
shipped attestation rules fire on it. A rejected event carries report claims only once the report's
signature and chain verified: unverified bytes must not be able to page anyone about another node.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from vigil.platform.errors import AttestationError, InvalidError, UnavailableError
from vigil.platform.events import NullObserver, PlatformEvent, PlatformObserver
from vigil.platform.local.release import encryption_jwk, key_fingerprint, load_recipient_key
from vigil.platform.local.tokens import TokenIssuer
from vigil.training_node.claims import (
    TYPE_CLAIM,
    AttestationPolicy,
    facts_from_report,
    report_claims,
    verify_maa_token,
)
from vigil.training_node.evidence import EvidenceBundle, bind_report_data
from vigil.training_node.snp import (
    SIGNING_KEY_VCEK,
    AttestationReport,
    TcbVersion,
    read_vcek_extensions,
    report_signature_valid,
)

__all__ = [
    "EVENT_KIND",
    "AttestationError",
    "AttestationPolicy",
    "LocalAttestationService",
    "attestation_record",
    "verify_maa_token",
]

EVENT_KIND: Final = "platform.attestation.verify"
MAX_NONCE_TTL: Final = 300.0


class LocalAttestationService:
    """Verifies SEV-SNP evidence and issues MAA-shaped tokens (module docstring). One event loop."""

    def __init__(
        self,
        issuer: TokenIssuer,
        *,
        root_pem: bytes,
        allowed_measurements: Iterable[str | bytes],
        min_tcb: Mapping[str, int] | TcbVersion,
        allowed_host_data: Iterable[str | bytes] | None = None,
        allow_debug: bool = False,
        allow_migration: bool = False,
        vmpl: int = 0,
        min_guest_svn: int = 0,
        allow_smt: bool = True,
        nonce_ttl: float = MAX_NONCE_TTL,
        token_ttl: float = 3600.0,
        observer: PlatformObserver | None = None,
        clock: Callable[[], float] = time.time,
        product: str = "Milan",
        compliance_status: str = "azure-compliant-uvm",
        max_pending_nonces: int = 10_000,
    ) -> None:
        if not 0 < nonce_ttl <= MAX_NONCE_TTL:
            raise ValueError(
                f"nonce_ttl must be in (0, {MAX_NONCE_TTL:g}] seconds: freshness is not optional"
            )
        if token_ttl <= 0 or max_pending_nonces <= 0:
            raise ValueError("token_ttl and max_pending_nonces must be positive")
        self.policy = AttestationPolicy.build(
            allowed_measurements,
            min_tcb,
            allowed_host_data,
            allow_debug=allow_debug,
            allow_migration=allow_migration,
            vmpl=vmpl,
            min_guest_svn=min_guest_svn,
            allow_smt=allow_smt,
        )
        self._ark = x509.load_pem_x509_certificate(root_pem)
        try:
            self._ark.verify_directly_issued_by(self._ark)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError("root_pem is not a self-signed ARK certificate") from None
        self.ark_fingerprint = _fingerprint(self._ark)
        self._issuer = issuer
        self._observer: PlatformObserver = observer or NullObserver()
        self._clock = clock
        self._nonce_ttl = nonce_ttl
        self._token_ttl = token_ttl
        self._product = product
        self._compliance = compliance_status
        self._max_pending = max_pending_nonces
        self._nonces: dict[str, tuple[float, str | None]] = {}

    def __repr__(self) -> str:
        return f"LocalAttestationService(issuer={self._issuer.issuer!r}, ark={self.ark_fingerprint[:16]}…)"

    def new_nonce(self, node_id: str | None = None) -> str:
        """A fresh single-use nonce, valid for ``nonce_ttl`` seconds (and only for ``node_id`` if given)."""
        now = self._clock()
        for stale in [n for n, (expires, _) in self._nonces.items() if expires <= now]:
            del self._nonces[stale]
        if len(self._nonces) >= self._max_pending:
            raise UnavailableError("too many outstanding attestation nonces; try again later")
        nonce = secrets.token_urlsafe(32)
        self._nonces[nonce] = (now + self._nonce_ttl, node_id)
        return nonce

    async def attest(
        self, bundle: EvidenceBundle, nonce: str, node_public_key_pem: bytes, *, node_id: str
    ) -> str:
        """The token for verified evidence; AttestationError (after an event) for anything else."""
        if not isinstance(node_id, str) or not node_id or len(node_id) > 200:
            raise InvalidError("node_id must be a non-empty string of at most 200 characters")
        seen: dict[str, Any] = {TYPE_CLAIM: "sevsnpvm"}
        try:
            claims = self._verify(bundle, nonce, node_public_key_pem, node_id, seen)
        except AttestationError as exc:
            await self._record(node_id, "denied", seen, reason=exc.reason)
            raise
        now = self._clock()
        token = self._issuer.issue(claims, self._token_ttl, now=now)
        issued = jwt.decode(token, options={"verify_signature": False})
        # the event carries the token's claims but its runtime keys (named by fingerprint instead) and
        # ``iss``: the local issuer is not an MAA provider, and att.untrusted-issuer would fire on it
        public = {k: v for k, v in issued.items() if k not in ("x-ms-runtime", "iss")}
        key = key_fingerprint(load_recipient_key(node_public_key_pem))
        await self._record(node_id, "success", public, jti=issued["jti"], key=key, expires=issued["exp"])
        return token

    def _verify(
        self, bundle: EvidenceBundle, nonce: str, node_pem: bytes, node_id: str, seen: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            report = AttestationReport.parse(bundle.report)
        except (ValueError, TypeError):
            raise AttestationError("malformed report") from None
        vcek = self._verify_chain(bundle.cert_chain_pem)
        if report.signing_key != SIGNING_KEY_VCEK:
            raise AttestationError("report is not signed by a VCEK")
        public_key = vcek.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise AttestationError("VCEK is not an ECDSA P-384 key")
        if not report_signature_valid(bundle.report, public_key):
            raise AttestationError("report signature invalid")
        seen.update(report_claims(report, self._product))
        try:
            node_key = load_recipient_key(node_pem)
        except ValueError as exc:
            raise AttestationError(f"node key: {exc}") from None
        if not isinstance(nonce, str) or not nonce.isascii() or len(nonce) > 256:
            raise AttestationError("nonce unknown or already used")
        if not hmac.compare_digest(report.report_data, bind_report_data(nonce, node_pem)):
            raise AttestationError("report_data does not bind the nonce and node key")
        self._consume(nonce, node_id)
        facts = facts_from_report(report, self._product)
        self.policy.check_platform(facts)
        try:
            vcek_tcb, hwid = read_vcek_extensions(vcek, self._product)
        except ValueError:
            raise AttestationError("VCEK extensions missing or malformed") from None
        if vcek_tcb != facts.tcb:
            raise AttestationError("VCEK TCB does not match the reported TCB")
        if report.tcb("current", self._product).below(facts.tcb):
            raise AttestationError("reported TCB exceeds the current TCB")
        if not self.policy.allow_uncommitted:
            current = (report.current_major, report.current_minor, report.current_build)
            committed = (report.committed_major, report.committed_minor, report.committed_build)
            if report.committed_tcb != report.current_tcb or committed != current:
                raise AttestationError("committed TCB or firmware differs from the current one")
        if report.mask_chip_id or not hmac.compare_digest(report.chip_id[: len(hwid)], hwid):
            raise AttestationError("chip id does not match the VCEK")
        self.policy.check_identity(facts)
        return seen | {
            "x-ms-ver": "1.0",
            "x-ms-compliance-status": self._compliance,
            "x-ms-policy-hash": self.policy.hash,
            "x-ms-runtime": {"keys": [encryption_jwk(node_key)], "client-payload": {"nonce": nonce}},
            "x-vigil-node-id": node_id,
        }

    def _verify_chain(self, pem: bytes) -> x509.Certificate:
        """The VCEK, once VCEK → ASK → pinned ARK verified."""
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except (ValueError, TypeError):
            raise AttestationError("malformed certificate chain") from None
        if len(certs) not in (2, 3):
            raise AttestationError("certificate chain must be VCEK, ASK and optionally ARK")
        if len(certs) == 3 and _fingerprint(certs[2]) != self.ark_fingerprint:
            raise AttestationError("certificate chain does not lead to the pinned ARK")
        vcek, ask = certs[0], certs[1]
        now = self._clock()
        for role, cert in (("ARK", self._ark), ("ASK", ask), ("VCEK", vcek)):
            if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
                raise AttestationError(f"{role} certificate expired or not yet valid")
        if not isinstance(ask.public_key(), rsa.RSAPublicKey):
            raise AttestationError("ASK is not an RSA key")
        for child, parent, reason in (
            (ask, self._ark, "ASK is not signed by the pinned ARK"),
            (vcek, ask, "VCEK is not signed by the ASK"),
        ):
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise AttestationError(reason) from None
        return vcek

    def _consume(self, nonce: str, node_id: str) -> None:
        entry = self._nonces.pop(nonce, None)
        if entry is None:
            raise AttestationError("nonce unknown or already used")
        expires, bound = entry
        if self._clock() >= expires:
            raise AttestationError("nonce expired")
        if bound is not None and bound != node_id:
            raise AttestationError("nonce was issued to another node")

    async def _record(self, node_id: str, outcome: str, claims: dict[str, Any], **details: Any) -> None:
        result = "verified" if outcome == "success" else "rejected"
        payload = {"result": result, "node_id": node_id, "claims": claims, **details}
        event = PlatformEvent(EVENT_KIND, node_id, node_id, payload, outcome, time=self._clock())
        await self._observer.record(event)


def attestation_record(event: PlatformEvent) -> dict[str, Any]:
    """The attestation normalizer's result wrapper for a ``platform.attestation.verify`` event."""
    if event.kind != EVENT_KIND:
        raise ValueError(f"not an attestation event: {event.kind}")
    d = event.details
    record = {"claims": dict(d["claims"]), "result": d["result"], "node_id": d["node_id"], "time": event.time}
    return record | ({"reason": d["reason"]} if "reason" in d else {})


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

"""SEV-SNP facts as MAA claims, the policy over them, and the verifier for real MAA tokens.

One :class:`AttestationPolicy` judges both kinds of evidence the platform accepts, so a node is held to
the same rules whether its proof is a raw report (the local attestation service,
:mod:`vigil.platform.local.attestation`) or a Microsoft Azure Attestation token (:func:`verify_maa_token`):
both are first reduced to :class:`SnpFacts` (:func:`facts_from_report`, :func:`facts_from_claims`).
:meth:`AttestationPolicy.check_platform` (DEBUG, MIGRATE_MA and SMT bits, VMPL, GUEST_SVN, every TCB
component against its minimum, component by component) and :meth:`AttestationPolicy.check_identity`
(launch measurement and HOST_DATA allow-lists) are split so the local service can check the VCEK's TCB,
the committed firmware and the chip id in between.

Claims follow ``../shared/reference/azure.md`` §4.3: :func:`report_claims` names the report fields as MAA
does (hex strings, ints, booleans, the TCB as ``-bootloader-svn``, ``-tee-svn``, ``-snpfw-svn``,
``-microcode-svn``). :func:`verify_maa_token` implements the §4.2 checklist: RS256 only (``none`` and
HS256 never, whatever the caller allows), ``iss`` in the allow-list, a ``jku`` header only when it is
``<issuer>/certs``, the signing key from *our* copy of that issuer's JWKS (through
:class:`~vigil.platform.local.tokens.JwksTokenVerifier`: ``exp``, ``iat`` and ``nbf`` required), then
``x-ms-ver`` 1.0 and the SEV-SNP claims: at the top level of a ``sevsnpvm`` token, under
``x-ms-isolation-tee`` of an ``azurevm`` one, and nowhere else (claims at the wrong level are missing
claims, and a missing claim fails). Every failure is :class:`AttestationError` with a fixed reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import jwt

from vigil.platform.attestation import VerifiedToken
from vigil.platform.errors import AttestationError, ReleaseDeniedError
from vigil.platform.local.tokens import JwksTokenVerifier, certs_url
from vigil.training_node.snp import AttestationReport, TcbVersion

SNP: Final = "x-ms-sevsnpvm-"
TYPE_CLAIM: Final = "x-ms-attestation-type"
COMPLIANT: Final = frozenset({"azure-compliant-cvm", "azure-compliant-uvm"})
_TCB_CLAIMS: Final = {
    "bootloader": "bootloader-svn",
    "tee": "tee-svn",
    "snp": "snpfw-svn",
    "microcode": "microcode-svn",
}


@dataclass(frozen=True, slots=True)
class SnpFacts:
    """What the policy judges, read from a verified report or from verified token claims."""

    measurement: str
    host_data: str
    debuggable: bool
    migration_allowed: bool
    vmpl: int
    tcb: TcbVersion
    guest_svn: int = 0
    smt_allowed: bool = False


@dataclass(frozen=True, slots=True)
class AttestationPolicy:
    """The claim checks shared by the local service and the MAA verifier (hex is lower-case)."""

    allowed_measurements: frozenset[str]
    min_tcb: TcbVersion
    allowed_host_data: frozenset[str] | None = None
    allow_debug: bool = False
    allow_migration: bool = False
    vmpl: int = 0
    compliance_statuses: frozenset[str] = field(default=COMPLIANT)
    #: the lowest GUEST_SVN accepted (the image's security version: raise it to retire vulnerable images)
    min_guest_svn: int = 0
    #: whether a guest whose policy allows SMT is accepted (SMT siblings share a core with other tenants)
    allow_smt: bool = True
    #: whether a report whose COMMITTED TCB or firmware differs from the CURRENT one is accepted (an
    #: uncommitted firmware update can still be rolled back; checked on raw reports, which carry both)
    allow_uncommitted: bool = False

    @classmethod
    def build(
        cls,
        allowed_measurements: Iterable[str | bytes],
        min_tcb: Mapping[str, int] | TcbVersion,
        allowed_host_data: Iterable[str | bytes] | None = None,
        **options: Any,
    ) -> AttestationPolicy:
        """A policy from hex or raw values; ValueError for an empty allow-list or a malformed value."""
        measurements = frozenset(_hex(m, 48, "measurement") for m in allowed_measurements)
        if not measurements:
            raise ValueError("allowed_measurements is empty: no node could ever attest")
        hosts = (
            None
            if allowed_host_data is None
            else frozenset(_hex(h, 32, "host_data") for h in allowed_host_data)
        )
        if not isinstance(min_tcb, TcbVersion):
            if set(min_tcb) != set(_TCB_CLAIMS):
                raise ValueError(f"min_tcb needs exactly {', '.join(_TCB_CLAIMS)}")
            min_tcb = TcbVersion(**min_tcb)
        return cls(measurements, min_tcb, hosts, **options)

    def check_platform(self, facts: SnpFacts) -> None:
        if facts.debuggable and not self.allow_debug:
            raise AttestationError("debug policy bit set")
        if facts.migration_allowed and not self.allow_migration:
            raise AttestationError("migration agent allowed by policy")
        if facts.smt_allowed and not self.allow_smt:
            raise AttestationError("SMT allowed by policy")
        if facts.vmpl != self.vmpl:
            raise AttestationError(f"VMPL {facts.vmpl}, expected {self.vmpl}")
        if facts.guest_svn < self.min_guest_svn:
            raise AttestationError(f"guest SVN {facts.guest_svn} below minimum {self.min_guest_svn}")
        for name in facts.tcb.below(self.min_tcb):
            have, need = getattr(facts.tcb, name), getattr(self.min_tcb, name)
            raise AttestationError(f"TCB component {name} {have} below minimum {need}")

    def check_identity(self, facts: SnpFacts) -> None:
        if facts.measurement not in self.allowed_measurements:
            raise AttestationError("launch measurement not in the allow-list")
        if self.allowed_host_data is not None and facts.host_data not in self.allowed_host_data:
            raise AttestationError("host data not in the allow-list")

    @property
    def hash(self) -> str:
        """MAA's ``x-ms-policy-hash`` formula, BASE64URL(SHA256(BASE64URL(policy JSON))), over this policy."""
        data = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(self).items()}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return _b64u(hashlib.sha256(_b64u(text.encode()).encode()).digest())


def facts_from_report(report: AttestationReport, product: str = "Milan") -> SnpFacts:
    return SnpFacts(
        measurement=report.measurement.hex(),
        host_data=report.host_data.hex(),
        debuggable=report.debug,
        migration_allowed=report.migrate_ma,
        vmpl=report.vmpl,
        tcb=report.tcb("reported", product),
        guest_svn=report.guest_svn,
        smt_allowed=report.smt_allowed,
    )


def report_claims(report: AttestationReport, product: str = "Milan") -> dict[str, Any]:
    """The ``x-ms-sevsnpvm-*`` claims MAA derives from a report (azure.md §4.3)."""
    tcb = report.tcb("reported", product)
    claims: dict[str, Any] = {TYPE_CLAIM: "sevsnpvm"}
    for name, value in (
        ("launchmeasurement", report.measurement),
        ("hostdata", report.host_data),
        ("reportdata", report.report_data),
        ("reportid", report.report_id),
        ("idkeydigest", report.id_key_digest),
        ("authorkeydigest", report.author_key_digest),
        ("familyId", report.family_id),
        ("imageId", report.image_id),
    ):
        claims[SNP + name] = value.hex()
    claims |= {
        SNP + "guestsvn": report.guest_svn,
        SNP + "vmpl": report.vmpl,
        SNP + "is-debuggable": report.debug,
        SNP + "migration-allowed": report.migrate_ma,
        SNP + "smt-allowed": report.smt_allowed,
    }
    return claims | {SNP + claim: getattr(tcb, part) for part, claim in _TCB_CLAIMS.items()}


def facts_from_claims(scope: Mapping[str, Any]) -> SnpFacts:
    """The facts in a token's SEV-SNP claims; AttestationError naming a missing or malformed claim."""

    def claim(name: str, kind: type, size: int = 0) -> Any:
        value: Any = scope.get(SNP + name)
        if kind is str:
            ok = _is_hex(value, size)
        elif kind is int:
            ok = type(value) is int and 0 <= value <= 0xFFFFFFFF
        else:
            ok = type(value) is kind
        if not ok:
            raise AttestationError(f"missing or malformed claim {SNP + name}")
        return value.lower() if kind is str else value

    tcb = {part: claim(name, int) for part, name in _TCB_CLAIMS.items()}
    if any(v > 0xFF for v in tcb.values()):
        raise AttestationError("malformed TCB claims")
    return SnpFacts(
        measurement=claim("launchmeasurement", str, 48),
        host_data=claim("hostdata", str, 32),
        debuggable=claim("is-debuggable", bool),
        migration_allowed=claim("migration-allowed", bool),
        vmpl=claim("vmpl", int),
        tcb=TcbVersion(**tcb),
        guest_svn=claim("guestsvn", int),
        smt_allowed=claim("smt-allowed", bool),
    )


def verify_maa_token(
    token: str,
    *,
    issuers: Iterable[str],
    jwks: Mapping[str, Mapping[str, Any]],
    policy: AttestationPolicy,
    algorithms: Iterable[str] = ("RS256",),
    leeway: float = 60.0,
    nonce: str | None = None,
) -> VerifiedToken:
    """A verified MAA token (``sevsnpvm``, or ``azurevm`` with the SNP claims in ``x-ms-isolation-tee``)
    that satisfies ``policy``; AttestationError naming the first failed check otherwise."""
    allowed_algs = set(algorithms)
    if not allowed_algs or not allowed_algs <= {"RS256"}:
        raise ValueError("MAA signs with RS256 only; no other algorithm may be allowed")
    trusted = {i.rstrip("/") for i in issuers}
    try:
        header = jwt.get_unverified_header(token)
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except (jwt.InvalidTokenError, TypeError):
        raise AttestationError("malformed token") from None
    if header.get("alg") not in allowed_algs:
        raise AttestationError("unsupported algorithm")
    if not isinstance(issuer, str) or issuer.rstrip("/") not in trusted:
        raise AttestationError("untrusted issuer")
    issuer = issuer.rstrip("/")
    if "jku" in header and header["jku"] != certs_url(issuer):
        raise AttestationError("jku is not the issuer's /certs")
    keys = next((v for k, v in jwks.items() if k.rstrip("/") == issuer), None)
    if keys is None:
        raise AttestationError("no JWKS for the issuer")
    try:
        verified = JwksTokenVerifier({issuer: keys}, leeway).verify(token)
    except ReleaseDeniedError as exc:
        raise AttestationError(exc.reason) from None
    claims = verified.claims
    if claims.get("x-ms-ver") != "1.0":
        raise AttestationError("x-ms-ver is not 1.0")
    kind, tee = claims.get(TYPE_CLAIM), claims.get("x-ms-isolation-tee")
    if kind == "sevsnpvm":
        scope: Mapping[str, Any] = claims
    elif kind == "azurevm" and isinstance(tee, dict) and tee.get(TYPE_CLAIM) == "sevsnpvm":
        scope = tee
    else:
        raise AttestationError("not a SEV-SNP attestation")
    if scope.get("x-ms-compliance-status") not in policy.compliance_statuses:
        raise AttestationError("compliance status missing or not accepted")
    facts = facts_from_claims(scope)
    policy.check_platform(facts)
    policy.check_identity(facts)
    if nonce is not None:
        runtime = scope.get("x-ms-runtime") or claims.get("x-ms-runtime") or {}
        payload = runtime.get("client-payload") if isinstance(runtime, dict) else None
        if not isinstance(payload, dict) or payload.get("nonce") != nonce:
            raise AttestationError("nonce does not match the token's client payload")
    return verified


def _is_hex(value: object, size: int) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 2 * size
        and all(c in "0123456789abcdefABCDEF" for c in value)
    )


def _hex(value: str | bytes, size: int, what: str) -> str:
    text = value.hex() if isinstance(value, bytes) else value
    if not isinstance(text, str) or not _is_hex(text, size):
        raise ValueError(f"{what} must be {size} bytes or {2 * size} hex digits")
    return text.lower()


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")

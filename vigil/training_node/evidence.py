"""Evidence providers: an SEV-SNP report bound to caller data, with the certificates that vouch for it.

Every provider answers :meth:`Evidence.report` with an :class:`EvidenceBundle`: the 1184-byte report
(:mod:`.snp`) whose REPORT_DATA is the caller's 64 bytes, and the PEM chain VCEK → ASK → ARK. The
verifier pins the ARK itself, so a chain that carries its own root gains nothing.

**Binding** (:func:`bind_report_data`): REPORT_DATA = SHA-512(nonce ‖ node public key DER), the nonce
as its ASCII text and the key as DER SubjectPublicKeyInfo. SHA-512 fills the 64 bytes exactly; the nonce
makes the report fresh (single-use, issued by the attestation service), and the key ties the report to the
ephemeral key pair the node generated inside the TEE, so a token minted from the report can only ever get
a key wrapped to that node.

**The software TEE** (:class:`SoftwareTee`) is the embedded default: it plays AMD's part with a local
ARK (self-signed) → ASK → VCEK hierarchy made once with ``cryptography`` and kept under a directory.
ARK and ASK are RSA (4096 bits by default, as AMD's; a smaller size keeps tests fast) and sign with
RSASSA-PSS SHA-384 (salt 48), as AMD's do; a VCEK is ECDSA P-384, one per TCB (as on hardware, where the
VCEK is derived from the chip secret *and* the TCB), carrying the KDS extensions. Private keys are files
of mode 0600 created with ``O_EXCL``, or AES-GCM sealed under a :class:`MasterKey` when one is given. It
proves nothing about the hardware: its value is that the whole path (evidence, verifier, token, release)
runs for real, and that a verifier configured with AMD's ARK instead rejects it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from vigil.errors import ConfigError
from vigil.platform.local.masterkey import MasterKey, read_private_file, write_new_file
from vigil.training_node.snp import (
    AttestationReport,
    TcbVersion,
    guest_policy,
    sign_report,
    vcek_extensions,
)

REPORT_DATA_SIZE: Final = 64
DEFAULT_ROOT_BITS: Final = 4096
_CPUID: Final = {"Milan": (0x19, 0x01, 0x01), "Genoa": (0x19, 0x11, 0x01), "Turin": (0x1A, 0x02, 0x00)}
_DAY: Final = datetime.timedelta(days=1)
#: a plausible Milan TCB (boot loader 4, TEE 0, SNP 22, microcode 213)
DEFAULT_TCB: Final = TcbVersion(bootloader=4, tee=0, snp=22, microcode=213)


def bind_report_data(nonce: str, node_public_key_pem: bytes) -> bytes:
    """REPORT_DATA for a nonce and the node's public key (module docstring)."""
    key = serialization.load_pem_public_key(node_public_key_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha512(nonce.encode("ascii") + der).digest()


@dataclass(frozen=True, slots=True)
class EvidenceBundle:
    """A report and the chain that vouches for it; public data only, safe to send anywhere."""

    report: bytes
    #: PEM certificates, VCEK first, then ASK, then (optionally) ARK
    cert_chain_pem: bytes
    #: Azure CVMs: the paravisor's runtime data whose SHA-256 is REPORT_DATA[0:32]
    runtime_data: bytes | None = None
    provider: str = "software"

    def to_json(self) -> dict[str, Any]:
        """The wire form: base64url fields (no padding)."""
        out: dict[str, Any] = {"report": _b64u(self.report), "chain": _b64u(self.cert_chain_pem)}
        if self.runtime_data is not None:
            out["runtime_data"] = _b64u(self.runtime_data)
        return out | {"provider": self.provider}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvidenceBundle:
        """The bundle of :meth:`to_json`; ValueError for anything malformed."""
        try:
            runtime = data.get("runtime_data")
            return cls(
                report=_unb64u(data["report"]),
                cert_chain_pem=_unb64u(data["chain"]),
                runtime_data=None if runtime is None else _unb64u(runtime),
                provider=str(data.get("provider", "software")),
            )
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ValueError("malformed evidence bundle") from None


class Evidence(Protocol):
    """Produces attestation evidence whose REPORT_DATA is ``report_data`` (64 bytes)."""

    async def report(self, report_data: bytes) -> EvidenceBundle: ...


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """What a software guest reports about itself: the values a real launch would fix."""

    measurement: bytes
    host_data: bytes = bytes(32)
    guest_svn: int = 1
    policy: int = guest_policy()
    vmpl: int = 0
    tcb: TcbVersion = DEFAULT_TCB
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)

    @classmethod
    def debuggable(cls, measurement: bytes, **changes: Any) -> LaunchConfig:
        """A guest launched with the DEBUG policy bit (the hypervisor can read its memory)."""
        return cls(measurement, policy=guest_policy(debug=True), **changes)


class SoftwareAmd:
    """The local stand-in for AMD: ARK and ASK, and a VCEK per TCB, persisted (module docstring)."""

    def __init__(
        self, directory: Path, *, key_bits: int = DEFAULT_ROOT_BITS, master: MasterKey | None = None
    ) -> None:
        self._dir = Path(directory)
        self._bits = key_bits
        self._master = master
        self._vceks: dict[tuple[bytes, TcbVersion, str], tuple[ec.EllipticCurvePrivateKey, bytes]] = {}
        sealed = sorted(p.name for p in self._dir.glob("*.key.sealed")) if self._dir.exists() else []
        plain = sorted(p.name for p in self._dir.glob("*.key")) if self._dir.exists() else []
        if (master is None and sealed) or (master is not None and plain):
            expected = "sealed keys but no master key" if sealed else "unsealed keys but a master key"
            raise ConfigError(f"the software TEE directory holds {expected} was given", path=str(self._dir))
        ark_key = self._key("ark", lambda: rsa.generate_private_key(65537, key_bits))
        self._ark_pem = self._cert("ark", lambda: _ca_cert(ark_key, ark_key, "ARK", None))
        ask_key = self._key("ask", lambda: rsa.generate_private_key(65537, key_bits))
        ark = x509.load_pem_x509_certificate(self._ark_pem)
        self._ask_pem = self._cert("ask", lambda: _ca_cert(ask_key, ark_key, "ASK", ark))
        self._ask_key = ask_key
        self._ask = x509.load_pem_x509_certificate(self._ask_pem)

    @property
    def ark_pem(self) -> bytes:
        """The root certificate a verifier pins."""
        return self._ark_pem

    @property
    def ask_pem(self) -> bytes:
        return self._ask_pem

    def vcek(
        self, chip_id: bytes, tcb: TcbVersion, product: str = "Milan"
    ) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        """The VCEK key and PEM certificate for this chip at this TCB (made and kept on first use)."""
        cache_key = (chip_id, tcb, product)
        if cache_key not in self._vceks:
            raw = tcb.to_raw(product)
            name = f"vcek-{product.lower()}-{hashlib.sha256(chip_id).hexdigest()[:16]}-{raw:016x}"
            key = self._key(name, lambda: ec.generate_private_key(ec.SECP384R1()))
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError("a VCEK key file does not hold an EC key", path=str(self._dir / name))
            pem = self._cert(name, lambda: _vcek_cert(key, self._ask_key, self._ask, tcb, chip_id, product))
            self._vceks[cache_key] = (key, pem)
        return self._vceks[cache_key]

    def _key(self, name: str, generate: Any) -> Any:
        """The private key in ``<name>.key`` (or ``.key.sealed``), made with ``generate`` when missing."""
        path = self._dir / (f"{name}.key.sealed" if self._master else f"{name}.key")
        aad = f"vigil.software-tee.{name}.v1".encode()
        if not path.exists():
            new: PrivateKeyTypes = generate()
            der = new.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            if write_new_file(path, self._master.seal(der, aad) if self._master else der):
                return new
        if self._master is not None:
            der = self._master.open(path.read_bytes(), aad)
        else:
            der = read_private_file(path, f"software TEE key {name}")
        return serialization.load_der_private_key(der, password=None)

    def _cert(self, name: str, make: Any) -> bytes:
        path = self._dir / f"{name}.pem"
        if not path.exists():
            cert: x509.Certificate = make()
            write_new_file(path, cert.public_bytes(serialization.Encoding.PEM))
        return path.read_bytes()

    def __repr__(self) -> str:
        return f"SoftwareAmd(directory={str(self._dir)!r}, key_bits={self._bits})"

    def __reduce__(self) -> Any:
        raise TypeError("a SoftwareAmd holds private keys and cannot be pickled")


class SoftwareTee:
    """A software SEV-SNP guest: signs reports with its chip's VCEK (see module docstring)."""

    def __init__(
        self, amd: SoftwareAmd, chip_id: bytes, config: LaunchConfig, *, product: str = "Milan"
    ) -> None:
        if len(chip_id) != 64:
            raise ValueError("a chip id is 64 bytes")
        self._amd = amd
        self._chip_id = chip_id
        self._product = product
        self._report_id = os.urandom(32)
        self.config = config
        config.tcb.to_raw(product)  # refuse an FMC level off Turin now, not at report time

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        config: LaunchConfig,
        *,
        key_bits: int = DEFAULT_ROOT_BITS,
        master: MasterKey | None = None,
        product: str = "Milan",
    ) -> SoftwareTee:
        """The software TEE kept in ``directory`` (ARK, ASK, VCEKs and the chip id, made on first use)."""
        amd = SoftwareAmd(directory, key_bits=key_bits, master=master)
        chip_path = Path(directory) / "chip_id"
        write_new_file(chip_path, os.urandom(64))
        chip_id = read_private_file(chip_path, "software TEE chip id", limit=64)
        return cls(amd, chip_id, config, product=product)

    @property
    def amd(self) -> SoftwareAmd:
        return self._amd

    @property
    def chip_id(self) -> bytes:
        return self._chip_id

    def with_config(self, **changes: Any) -> SoftwareTee:
        """The same chip launched with other values (another image, the debug bit, another TCB)."""
        return SoftwareTee(self._amd, self._chip_id, replace(self.config, **changes), product=self._product)

    async def report(self, report_data: bytes) -> EvidenceBundle:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data is {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
        c = self.config
        tcb = c.tcb.to_raw(self._product)
        vcek_key, vcek_pem = self._amd.vcek(self._chip_id, c.tcb, self._product)
        fam, mod, step = _CPUID[self._product]
        report = AttestationReport(
            version=3,
            guest_svn=c.guest_svn,
            policy=c.policy,
            family_id=c.family_id,
            image_id=c.image_id,
            vmpl=c.vmpl,
            current_tcb=tcb,
            platform_info=0b1,  # SMT enabled on the (pretend) host
            report_data=report_data,
            measurement=c.measurement,
            host_data=c.host_data,
            report_id=self._report_id,
            reported_tcb=tcb,
            cpuid_fam_id=fam,
            cpuid_mod_id=mod,
            cpuid_step=step,
            chip_id=self._chip_id,
            committed_tcb=tcb,
            current_build=21,
            current_minor=55,
            current_major=1,
            committed_build=21,
            committed_minor=55,
            committed_major=1,
            launch_tcb=tcb,
        )
        signed = sign_report(report, vcek_key)
        chain = vcek_pem + self._amd.ask_pem + self._amd.ark_pem
        return EvidenceBundle(report=signed.pack(), cert_chain_pem=chain, provider="software")

    def __repr__(self) -> str:
        return f"SoftwareTee(product={self._product!r}, chip={self._chip_id[:4].hex()}…, amd={self._amd!r})"


def _name(role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vigil software TEE (not AMD)"),
            x509.NameAttribute(NameOID.COMMON_NAME, role),
        ]
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _ca_cert(
    key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey, role: str, issuer: x509.Certificate | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{role}-Milan"))
        .issuer_name(issuer.subject if issuer else _name(f"{role}-Milan"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 25 * 365 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    return builder.sign(signer, hashes.SHA384(), rsa_padding=_pss())


def _vcek_cert(
    key: ec.EllipticCurvePrivateKey,
    ask_key: rsa.RSAPrivateKey,
    ask: x509.Certificate,
    tcb: TcbVersion,
    chip_id: bytes,
    product: str,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("SEV-VCEK"))
        .issuer_name(ask.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 7 * 365 * _DAY)
    )
    for ext in vcek_extensions(tcb, chip_id, product):
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(ask_key, hashes.SHA384(), rsa_padding=_pss())


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

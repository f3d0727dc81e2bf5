"""The AMD SEV-SNP ``ATTESTATION_REPORT`` (ABI spec 56860), byte for byte, and its VCEK signature.

One layout table (:data:`LAYOUT`) drives both :meth:`AttestationReport.pack` and
:meth:`AttestationReport.parse`, and is checked at import to tile 0x000–0x4A0 with no gap or overlap, so
the two directions cannot drift apart. Every field, reserved ones included, is kept: ``pack(parse(b)) ==
b`` for any 1184 bytes, which is what lets a verifier check the signature over exactly the bytes it was
given. All integers are little-endian; R and S of the signature are 72-byte little-endian fields holding
zero-padded P-384 integers, so they are read as plain little-endian integers too.

Layout (``../shared/reference/azure.md`` §4.4; the 0x188 and 0x1E0 regions split as in google/go-sev-guest
``abi/abi.go``, which names the same offsets)::

    0x000 VERSION 4        0x004 GUEST_SVN 4       0x008 POLICY 8          0x010 FAMILY_ID 16
    0x020 IMAGE_ID 16      0x030 VMPL 4            0x034 SIGNATURE_ALGO 4  0x038 CURRENT_TCB 8
    0x040 PLATFORM_INFO 8  0x048 signer flags 4    0x04C reserved 4        0x050 REPORT_DATA 64
    0x090 MEASUREMENT 48   0x0C0 HOST_DATA 32      0x0E0 ID_KEY_DIGEST 48  0x110 AUTHOR_KEY_DIGEST 48
    0x140 REPORT_ID 32     0x160 REPORT_ID_MA 32   0x180 REPORTED_TCB 8    0x188 CPUID_FAM/MOD/STEP 1+1+1
    0x18B reserved 21      0x1A0 CHIP_ID 64        0x1E0 COMMITTED_TCB 8   0x1E8 CURRENT_BUILD/MINOR/MAJOR
    0x1EB reserved 1       0x1EC COMMITTED_BUILD/MINOR/MAJOR               0x1EF reserved 1
    0x1F0 LAUNCH_TCB 8     0x1F8 reserved 168      0x2A0 SIGNATURE: R 72, S 72, reserved 368

The signature covers 0x000–0x29F (:data:`SIGNED_SIZE`). The 368 bytes after R and S are *not* signed, so
:func:`report_signature_valid` requires them to be zero (as go-sev-guest does), and requires R and S in
[1, n): otherwise flipping a byte there would leave a report that still verifies.

``TCB_VERSION`` differs by generation (:class:`TcbVersion`): on Milan and Genoa byte 0 is the boot loader,
1 the TEE, 2–5 reserved, 6 SNP, 7 microcode; Turin reorders it to FMC, boot loader, TEE, SNP, three
reserved bytes, microcode. The raw 64-bit values stay in the report; the view is chosen by product.

The VCEK certificate carries the TCB it was issued for and the chip's id as AMD KDS extensions
(:func:`vcek_extensions`, :func:`read_vcek_extensions`): SPLs are DER INTEGERs under
1.3.6.1.4.1.3704.1.3.{1 bl, 2 tee, 3 snp, 8 ucode, 9 fmc}; hwID (1.3.6.1.4.1.3704.1.4) is the raw 64-byte
CHIP_ID *without* an OCTET STRING tag (KDS omits it; a tagged form is accepted too), 8 bytes on Turin.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

REPORT_SIZE: Final = 0x4A0
SIGNED_SIZE: Final = 0x2A0
SIGNATURE_ALGO_ECDSA_P384_SHA384: Final = 1
#: order of the P-384 group: R and S must lie in [1, n)
P384_ORDER: Final = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
)

# POLICY bits (ABI_MINOR is bits 7:0, ABI_MAJOR 15:8)
POLICY_SMT: Final = 1 << 16
POLICY_RESERVED_ONE: Final = 1 << 17  # must be 1
POLICY_MIGRATE_MA: Final = 1 << 18
POLICY_DEBUG: Final = 1 << 19
POLICY_SINGLE_SOCKET: Final = 1 << 20

# signer flags at 0x048: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY
SIGNING_KEY_VCEK: Final = 0
SIGNING_KEY_VLEK: Final = 1
SIGNING_KEY_NONE: Final = 7

PRODUCTS: Final = ("Milan", "Genoa", "Turin")

#: (field, offset, size, kind): "u" little-endian unsigned integer, "b" raw bytes
LAYOUT: Final[tuple[tuple[str, int, int, str], ...]] = (
    ("version", 0x000, 4, "u"),
    ("guest_svn", 0x004, 4, "u"),
    ("policy", 0x008, 8, "u"),
    ("family_id", 0x010, 16, "b"),
    ("image_id", 0x020, 16, "b"),
    ("vmpl", 0x030, 4, "u"),
    ("signature_algo", 0x034, 4, "u"),
    ("current_tcb", 0x038, 8, "u"),
    ("platform_info", 0x040, 8, "u"),
    ("signer_info", 0x048, 4, "u"),
    ("reserved_04c", 0x04C, 4, "b"),
    ("report_data", 0x050, 64, "b"),
    ("measurement", 0x090, 48, "b"),
    ("host_data", 0x0C0, 32, "b"),
    ("id_key_digest", 0x0E0, 48, "b"),
    ("author_key_digest", 0x110, 48, "b"),
    ("report_id", 0x140, 32, "b"),
    ("report_id_ma", 0x160, 32, "b"),
    ("reported_tcb", 0x180, 8, "u"),
    ("cpuid_fam_id", 0x188, 1, "u"),
    ("cpuid_mod_id", 0x189, 1, "u"),
    ("cpuid_step", 0x18A, 1, "u"),
    ("reserved_18b", 0x18B, 21, "b"),
    ("chip_id", 0x1A0, 64, "b"),
    ("committed_tcb", 0x1E0, 8, "u"),
    ("current_build", 0x1E8, 1, "u"),
    ("current_minor", 0x1E9, 1, "u"),
    ("current_major", 0x1EA, 1, "u"),
    ("reserved_1eb", 0x1EB, 1, "b"),
    ("committed_build", 0x1EC, 1, "u"),
    ("committed_minor", 0x1ED, 1, "u"),
    ("committed_major", 0x1EE, 1, "u"),
    ("reserved_1ef", 0x1EF, 1, "b"),
    ("launch_tcb", 0x1F0, 8, "u"),
    ("reserved_1f8", 0x1F8, 168, "b"),
    ("signature_r", 0x2A0, 72, "u"),
    ("signature_s", 0x2E8, 72, "u"),
    ("signature_reserved", 0x330, 368, "b"),
)


def _check_layout() -> None:
    end = 0
    for name, offset, size, _ in LAYOUT:
        if offset != end:
            raise AssertionError(f"SEV-SNP layout: {name} at {offset:#x}, expected {end:#x}")
        end = offset + size
    if end != REPORT_SIZE:
        raise AssertionError(f"SEV-SNP layout ends at {end:#x}, expected {REPORT_SIZE:#x}")


_check_layout()


def guest_policy(
    *,
    abi_major: int = 1,
    abi_minor: int = 51,
    smt: bool = True,
    migrate_ma: bool = False,
    debug: bool = False,
    single_socket: bool = False,
) -> int:
    """A POLICY value (the reserved bit 17 is always set, as the ABI requires)."""
    if not (0 <= abi_major <= 0xFF and 0 <= abi_minor <= 0xFF):
        raise ValueError("ABI major and minor are one byte each")
    value = abi_minor | abi_major << 8 | POLICY_RESERVED_ONE
    value |= POLICY_SMT if smt else 0
    value |= POLICY_MIGRATE_MA if migrate_ma else 0
    value |= POLICY_DEBUG if debug else 0
    return value | (POLICY_SINGLE_SOCKET if single_socket else 0)


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """The security patch levels of one TCB_VERSION; ``fmc`` exists on Turin only."""

    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                raise ValueError(f"TCB component {f.name} must be 0..255, got {value!r}")

    @classmethod
    def from_raw(cls, raw: int, product: str = "Milan") -> TcbVersion:
        _check_product(product)
        b = raw.to_bytes(8, "little")
        if product == "Turin":
            return cls(fmc=b[0], bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def to_raw(self, product: str = "Milan") -> int:
        """The 64-bit TCB_VERSION (reserved bytes zero); ValueError for an FMC level off Turin."""
        _check_product(product)
        if product == "Turin":
            b = bytes([self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        elif self.fmc:
            raise ValueError(f"{product} has no FMC component in its TCB_VERSION")
        else:
            b = bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])
        return int.from_bytes(b, "little")

    def below(self, minimum: TcbVersion) -> list[str]:
        """The components lower than ``minimum``'s (compared one by one, never as one integer)."""
        return [f.name for f in fields(self) if getattr(self, f.name) < getattr(minimum, f.name)]


def _check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise ValueError(f"unknown SEV-SNP product {product!r} (one of {', '.join(PRODUCTS)})")


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """Every field of ATTESTATION_REPORT (module docstring); defaults are zero."""

    version: int = 2
    guest_svn: int = 0
    policy: int = POLICY_RESERVED_ONE
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIGNATURE_ALGO_ECDSA_P384_SHA384
    current_tcb: int = 0
    platform_info: int = 0
    signer_info: int = 0
    reserved_04c: bytes = bytes(4)
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = bytes(32)
    reported_tcb: int = 0
    cpuid_fam_id: int = 0
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    reserved_18b: bytes = bytes(21)
    chip_id: bytes = bytes(64)
    committed_tcb: int = 0
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    reserved_1eb: bytes = bytes(1)
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    reserved_1ef: bytes = bytes(1)
    launch_tcb: int = 0
    reserved_1f8: bytes = bytes(168)
    signature_r: int = 0
    signature_s: int = 0
    signature_reserved: bytes = bytes(368)

    def __post_init__(self) -> None:
        for name, _, size, kind in LAYOUT:
            value = getattr(self, name)
            if kind == "b":
                if not isinstance(value, bytes) or len(value) != size:
                    raise ValueError(f"{name} must be {size} bytes")
            elif not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << (8 * size):
                raise ValueError(f"{name} must be an unsigned {8 * size}-bit integer")

    @classmethod
    def parse(cls, data: bytes) -> AttestationReport:
        """The report in exactly 1184 bytes; ValueError for any other length."""
        if len(data) != REPORT_SIZE:
            raise ValueError(f"an SEV-SNP report is {REPORT_SIZE} bytes, got {len(data)}")
        values: dict[str, int | bytes] = {}
        for name, offset, size, kind in LAYOUT:
            chunk = bytes(data[offset : offset + size])
            values[name] = chunk if kind == "b" else int.from_bytes(chunk, "little")
        return cls(**values)  # type: ignore[arg-type]

    def pack(self) -> bytes:
        out = bytearray(REPORT_SIZE)
        for name, offset, size, kind in LAYOUT:
            value = getattr(self, name)
            out[offset : offset + size] = value if kind == "b" else value.to_bytes(size, "little")
        return bytes(out)

    def signed_bytes(self) -> bytes:
        return self.pack()[:SIGNED_SIZE]

    # --- policy and signer flags ---------------------------------------------------------------------

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def smt_allowed(self) -> bool:
        return bool(self.policy & POLICY_SMT)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.policy & POLICY_MIGRATE_MA)

    @property
    def single_socket(self) -> bool:
        return bool(self.policy & POLICY_SINGLE_SOCKET)

    @property
    def signing_key(self) -> int:
        """0 VCEK, 1 VLEK, 7 none (unsigned)."""
        return (self.signer_info >> 2) & 0b111

    @property
    def mask_chip_id(self) -> bool:
        return bool(self.signer_info & 0b10)

    def tcb(self, which: str = "reported", product: str = "Milan") -> TcbVersion:
        """One of the report's TCB values (``reported``, ``current``, ``committed``, ``launch``)."""
        return TcbVersion.from_raw(getattr(self, f"{which}_tcb"), product)


def sign_report(report: AttestationReport, key: ec.EllipticCurvePrivateKey) -> AttestationReport:
    """``report`` signed by ``key`` (a VCEK): ECDSA P-384 SHA-384 over bytes 0x000–0x29F."""
    if not isinstance(key.curve, ec.SECP384R1):
        raise ValueError("a VCEK is an ECDSA P-384 key")
    unsigned = replace(
        report,
        signature_algo=SIGNATURE_ALGO_ECDSA_P384_SHA384,
        signature_r=0,
        signature_s=0,
        signature_reserved=bytes(368),
    )
    r, s = decode_dss_signature(key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA384())))
    return replace(unsigned, signature_r=r, signature_s=s)


def report_signature_valid(data: bytes, key: ec.EllipticCurvePublicKey) -> bool:
    """Whether the 1184 bytes in ``data`` carry a valid VCEK signature by ``key`` (strict: algorithm 1,
    R and S in [1, n), the unsigned rest of the signature field zero)."""
    if len(data) != REPORT_SIZE or not isinstance(key.curve, ec.SECP384R1):
        return False
    report = AttestationReport.parse(data)
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 or any(report.signature_reserved):
        return False
    r, s = report.signature_r, report.signature_s
    if not (0 < r < P384_ORDER and 0 < s < P384_ORDER):
        return False
    try:
        key.verify(encode_dss_signature(r, s), bytes(data[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


# --- AMD KDS extensions of a VCEK certificate ---------------------------------------------------------

OID_PRODUCT_NAME: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
OID_HWID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
OID_SPL: Final = {
    "bootloader": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1"),
    "tee": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2"),
    "snp": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3"),
    "microcode": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8"),
    "fmc": x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9"),
}


def vcek_extensions(tcb: TcbVersion, chip_id: bytes, product: str = "Milan") -> list[x509.ExtensionType]:
    """The KDS extensions of a VCEK issued for ``tcb`` on chip ``chip_id`` (hwID untagged, as KDS does)."""
    _check_product(product)
    hwid = chip_id[:8] if product == "Turin" else chip_id
    name = f"{product}-B0".encode("ascii")
    exts: list[x509.ExtensionType] = [
        x509.UnrecognizedExtension(OID_PRODUCT_NAME, b"\x16" + bytes([len(name)]) + name),
    ]
    for component, oid in OID_SPL.items():
        if component != "fmc" or product == "Turin":
            exts.append(x509.UnrecognizedExtension(oid, _der_small_int(getattr(tcb, component))))
    exts.append(x509.UnrecognizedExtension(OID_HWID, hwid))
    return exts


def read_vcek_extensions(cert: x509.Certificate, product: str = "Milan") -> tuple[TcbVersion, bytes]:
    """The TCB and hwID a VCEK certificate was issued for; ValueError when they are missing or malformed."""
    _check_product(product)
    values: dict[str, int] = {}
    for component, oid in OID_SPL.items():
        if component == "fmc" and product != "Turin":
            continue
        values[component] = _parse_small_int(_extension_value(cert, oid), component)
    hwid = _extension_value(cert, OID_HWID)
    size = 8 if product == "Turin" else 64
    if len(hwid) == size + 2 and hwid[:2] == bytes([0x04, size]):
        hwid = hwid[2:]  # tolerate a DER OCTET STRING, should KDS ever add the tag
    if len(hwid) != size:
        raise ValueError(f"VCEK hwID is {len(hwid)} bytes, expected {size}")
    return TcbVersion(**values), hwid


def _extension_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise ValueError(f"VCEK has no extension {oid.dotted_string}") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise ValueError(f"VCEK extension {oid.dotted_string} is not raw")
    return ext.value


def _der_small_int(value: int) -> bytes:
    body = bytes([value]) if value < 0x80 else bytes([0, value])
    return bytes([0x02, len(body)]) + body


def _parse_small_int(der: bytes, what: str) -> int:
    if len(der) < 3 or der[0] != 0x02 or der[1] != len(der) - 2 or der[1] > 2:
        raise ValueError(f"VCEK {what} SPL is not a small DER INTEGER")
    value = int.from_bytes(der[2:], "big", signed=True)
    if not 0 <= value <= 0xFF:
        raise ValueError(f"VCEK {what} SPL {value} is out of range")
    return value

"""The ATTESTATION_REPORT layout byte for byte (azure.md §4.4), TCB views, policy bits, the VCEK signature."""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from vigil.training_node import snp
from vigil.training_node.snp import (
    LAYOUT,
    P384_ORDER,
    REPORT_SIZE,
    AttestationReport,
    TcbVersion,
    guest_policy,
    read_vcek_extensions,
    report_signature_valid,
    sign_report,
    vcek_extensions,
)

#: offsets and sizes of azure.md §4.4's table, written out independently of LAYOUT
TABLE = {
    "version": (0x000, 4),
    "guest_svn": (0x004, 4),
    "policy": (0x008, 8),
    "family_id": (0x010, 16),
    "image_id": (0x020, 16),
    "vmpl": (0x030, 4),
    "signature_algo": (0x034, 4),
    "current_tcb": (0x038, 8),
    "platform_info": (0x040, 8),
    "signer_info": (0x048, 4),
    "report_data": (0x050, 64),
    "measurement": (0x090, 48),
    "host_data": (0x0C0, 32),
    "id_key_digest": (0x0E0, 48),
    "author_key_digest": (0x110, 48),
    "report_id": (0x140, 32),
    "report_id_ma": (0x160, 32),
    "reported_tcb": (0x180, 8),
    "chip_id": (0x1A0, 64),
    "committed_tcb": (0x1E0, 8),
    "launch_tcb": (0x1F0, 8),
    "signature_r": (0x2A0, 72),
    "signature_s": (0x2E8, 72),
}


def test_the_layout_matches_the_reference_table_and_tiles_1184_bytes() -> None:
    by_name = {name: (offset, size) for name, offset, size, _ in LAYOUT}
    for name, place in TABLE.items():
        assert by_name[name] == place, name
    assert REPORT_SIZE == 1184 and snp.SIGNED_SIZE == 0x2A0
    assert sum(size for _, _, size, _ in LAYOUT) == REPORT_SIZE


@pytest.mark.parametrize("seed", range(5))
def test_parse_then_pack_is_byte_exact_for_any_bytes(seed: int) -> None:
    data = random.Random(seed).randbytes(REPORT_SIZE)
    report = AttestationReport.parse(data)
    assert report.pack() == data
    assert AttestationReport.parse(report.pack()) == report


@pytest.mark.parametrize(("name", "offset", "size", "kind"), LAYOUT, ids=[f[0] for f in LAYOUT])
def test_each_field_is_written_at_its_offset(name: str, offset: int, size: int, kind: str) -> None:
    raw = bytes((0xA0 + i) % 256 or 1 for i in range(size))
    value = raw if kind == "b" else int.from_bytes(raw, "little")
    packed = AttestationReport(**{name: value}).pack()
    assert packed[offset : offset + size] == raw
    others = packed[:offset] + packed[offset + size :]
    assert others == AttestationReport().pack()[:offset] + AttestationReport().pack()[offset + size :]
    assert getattr(AttestationReport.parse(packed), name) == value


def test_known_values_land_on_their_documented_bytes() -> None:
    report = AttestationReport(version=2, vmpl=1, policy=guest_policy(debug=True), guest_svn=7)
    data = report.pack()
    assert data[0:4] == b"\x02\x00\x00\x00" and data[4:8] == b"\x07\x00\x00\x00"
    assert data[0x30:0x34] == b"\x01\x00\x00\x00" and data[0x34:0x38] == b"\x01\x00\x00\x00"
    # policy bit 19 (DEBUG) is bit 3 of the byte at 0x0A; bit 17 (reserved, must be 1) is bit 1
    assert data[0x0A] & 0b1000 and data[0x0A] & 0b10 and data[0x0A] & 0b1  # and bit 16 (SMT)


def test_parse_refuses_other_lengths_and_fields_are_validated() -> None:
    for size in (0, REPORT_SIZE - 1, REPORT_SIZE + 1, 4000):
        with pytest.raises(ValueError, match="1184 bytes"):
            AttestationReport.parse(bytes(size))
    with pytest.raises(ValueError, match="measurement must be 48 bytes"):
        AttestationReport(measurement=bytes(47))
    with pytest.raises(ValueError, match="vmpl must be an unsigned 32-bit"):
        AttestationReport(vmpl=1 << 32)
    with pytest.raises(ValueError, match="guest_svn"):
        AttestationReport(guest_svn=-1)


def test_policy_bits() -> None:
    assert guest_policy(abi_major=1, abi_minor=51, smt=False) == 0x2_0133  # ABI 1.51, reserved bit 17
    flags = {
        "smt_allowed": guest_policy(smt=True),
        "migrate_ma": guest_policy(smt=False, migrate_ma=True),
        "debug": guest_policy(smt=False, debug=True),
        "single_socket": guest_policy(smt=False, single_socket=True),
    }
    for prop, policy in flags.items():
        report = AttestationReport(policy=policy)
        assert {p: getattr(report, p) for p in flags} == {p: p == prop for p in flags}
    assert guest_policy(debug=True) & (1 << 19) and guest_policy() & (1 << 17)
    with pytest.raises(ValueError):
        guest_policy(abi_major=256)


def test_signer_info_fields() -> None:
    assert AttestationReport(signer_info=0).signing_key == snp.SIGNING_KEY_VCEK
    assert AttestationReport(signer_info=1 << 2).signing_key == snp.SIGNING_KEY_VLEK
    assert AttestationReport(signer_info=7 << 2).signing_key == snp.SIGNING_KEY_NONE
    assert AttestationReport(signer_info=0b10).mask_chip_id


def test_tcb_version_milan_genoa_and_turin_layouts() -> None:
    tcb = TcbVersion(bootloader=4, tee=1, snp=22, microcode=213)
    raw = tcb.to_raw("Milan")
    assert raw.to_bytes(8, "little") == bytes([4, 1, 0, 0, 0, 0, 22, 213])
    assert TcbVersion.from_raw(raw, "Genoa") == tcb
    turin = TcbVersion(fmc=2, bootloader=4, tee=1, snp=22, microcode=213)
    assert turin.to_raw("Turin").to_bytes(8, "little") == bytes([2, 4, 1, 22, 0, 0, 0, 213])
    assert TcbVersion.from_raw(turin.to_raw("Turin"), "Turin") == turin
    with pytest.raises(ValueError, match="no FMC"):
        turin.to_raw("Milan")
    with pytest.raises(ValueError, match="unknown SEV-SNP product"):
        tcb.to_raw("Naples")
    with pytest.raises(ValueError, match=r"0\.\.255"):
        TcbVersion(microcode=256)
    assert TcbVersion(1, 9, 9, 9).below(TcbVersion(2, 0, 0, 10)) == ["bootloader", "microcode"]
    report = AttestationReport(reported_tcb=raw, current_tcb=TcbVersion(snp=1).to_raw())
    assert report.tcb() == tcb and report.tcb("current").snp == 1


@pytest.fixture(scope="module")
def vcek() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_signature_is_r_and_s_little_endian_over_the_first_0x2a0_bytes(
    vcek: ec.EllipticCurvePrivateKey,
) -> None:
    signed = sign_report(AttestationReport(report_data=os.urandom(64)), vcek)
    data = signed.pack()
    r = int.from_bytes(data[0x2A0 : 0x2A0 + 72], "little")
    s = int.from_bytes(data[0x2E8 : 0x2E8 + 72], "little")
    assert data[0x2A0 + 48 : 0x2A0 + 72] == bytes(24)  # zero padding above the 48-byte P-384 integer
    vcek.public_key().verify(encode_dss_signature(r, s), data[:0x2A0], ec.ECDSA(hashes.SHA384()))
    assert report_signature_valid(data, vcek.public_key())


def test_signature_checks_are_strict(vcek: ec.EllipticCurvePrivateKey) -> None:
    good = sign_report(AttestationReport(), vcek)
    key = vcek.public_key()
    assert report_signature_valid(good.pack(), key)
    bad = [
        replace(good, signature_reserved=b"\x01" + bytes(367)),  # unsigned bytes must be zero
        replace(good, signature_r=good.signature_r + P384_ORDER),  # same value mod n, out of range
        replace(good, signature_s=0),
        replace(good, signature_algo=2),
        replace(good, guest_svn=1),
    ]
    assert not any(report_signature_valid(r.pack(), key) for r in bad)
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert not report_signature_valid(good.pack(), other)
    assert not report_signature_valid(good.pack(), p256)
    assert not report_signature_valid(good.pack()[:-1], key)
    with pytest.raises(ValueError, match="P-384"):
        sign_report(good, ec.generate_private_key(ec.SECP256R1()))


def _cert_with(exts: list[x509.ExtensionType]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "SEV-VCEK")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for ext in exts:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA384())


def test_vcek_extensions_round_trip_and_hwid_is_untagged() -> None:
    tcb, chip = TcbVersion(bootloader=4, tee=1, snp=22, microcode=213), os.urandom(64)
    exts = vcek_extensions(tcb, chip)
    cert = _cert_with(exts)
    assert read_vcek_extensions(cert) == (tcb, chip)
    hwid = cert.extensions.get_extension_for_oid(snp.OID_HWID).value
    assert isinstance(hwid, x509.UnrecognizedExtension) and hwid.value == chip
    ucode = cert.extensions.get_extension_for_oid(snp.OID_SPL["microcode"]).value
    assert isinstance(ucode, x509.UnrecognizedExtension) and ucode.value == b"\x02\x02\x00\xd5"
    # a DER-tagged hwID is accepted too; Turin's hwID is 8 bytes and it has an FMC SPL
    tagged = [e for e in exts if e.oid != snp.OID_HWID]
    tagged.append(x509.UnrecognizedExtension(snp.OID_HWID, b"\x04\x40" + chip))
    assert read_vcek_extensions(_cert_with(tagged)) == (tcb, chip)
    turin = replace(tcb, fmc=3)
    assert read_vcek_extensions(_cert_with(vcek_extensions(turin, chip, "Turin")), "Turin") == (
        turin,
        chip[:8],
    )


def test_malformed_vcek_extensions_are_refused() -> None:
    tcb, chip = TcbVersion(), bytes(64)
    without_hwid = [e for e in vcek_extensions(tcb, chip) if e.oid != snp.OID_HWID]
    with pytest.raises(ValueError, match=r"no extension 1\.3\.6\.1\.4\.1\.3704\.1\.4"):
        read_vcek_extensions(_cert_with(without_hwid))
    short = [*without_hwid, x509.UnrecognizedExtension(snp.OID_HWID, bytes(63))]
    with pytest.raises(ValueError, match="hwID is 63 bytes"):
        read_vcek_extensions(_cert_with(short))
    bad_int = [e for e in vcek_extensions(tcb, chip) if e.oid != snp.OID_SPL["tee"]]
    bad_int.append(x509.UnrecognizedExtension(snp.OID_SPL["tee"], b"\x04\x01\x01"))
    with pytest.raises(ValueError, match="tee SPL is not a small DER INTEGER"):
        read_vcek_extensions(_cert_with(bad_int))

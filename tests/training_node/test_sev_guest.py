"""The /dev/sev-guest provider: UAPI structs and ioctl number, request packing, response parsing.

Only the hardware test needs a real SEV-SNP guest; everything else runs on captured-shape buffers
built here in the layout of ``include/uapi/linux/sev-guest.h`` and the firmware's MSG_REPORT_RSP.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vigil.training_node import sev_guest
from vigil.training_node.evidence import SoftwareTee
from vigil.training_node.sev_guest import (
    SNP_GET_REPORT,
    SevGuestError,
    SevGuestEvidence,
    SnpGuestRequestIoctl,
    SnpReportReq,
    SnpReportResp,
    kds_vcek_url,
    pack_report_request,
    parse_report_response,
)
from vigil.training_node.snp import AttestationReport, TcbVersion, report_signature_valid

from .support import run


def test_uapi_struct_sizes_and_the_ioctl_number() -> None:
    assert ctypes.sizeof(SnpReportReq) == 96
    assert ctypes.sizeof(SnpReportResp) == 4000
    assert ctypes.sizeof(SnpGuestRequestIoctl) == 32
    assert SnpGuestRequestIoctl.req_data.offset == 8 and SnpGuestRequestIoctl.exitinfo2.offset == 24
    assert SNP_GET_REPORT == 0xC0205300  # _IOWR('S', 0x0, 32 bytes)


def test_the_request_is_user_data_vmpl_and_28_zero_bytes() -> None:
    data = bytes(range(64))
    packed = pack_report_request(data, vmpl=2)
    assert len(packed) == 96 and packed[:64] == data
    assert packed[64:68] == b"\x02\x00\x00\x00" and packed[68:] == bytes(28)
    request = SnpReportReq.from_buffer_copy(packed)
    assert bytes(request.user_data) == data and request.vmpl == 2
    with pytest.raises(ValueError, match="64 bytes"):
        pack_report_request(bytes(63))
    with pytest.raises(ValueError, match="VMPL"):
        pack_report_request(data, vmpl=4)


def response_buffer(report: bytes, status: int = 0, size: int = 1184) -> bytes:
    """snp_report_resp.data as the firmware fills it: status, report_size, 24 reserved, the report."""
    body = struct.pack("<II", status, size) + bytes(24) + report
    return body + bytes(4000 - len(body))


def test_the_report_is_read_at_0x20_of_the_response(tee: SoftwareTee) -> None:
    bundle = run(tee.report(b"\x11" * 64))
    data = response_buffer(bundle.report)
    assert parse_report_response(data) == bundle.report
    response = SnpReportResp.from_buffer_copy(data)  # the ctypes view the ioctl fills
    assert parse_report_response(bytes(response.data)) == bundle.report
    vcek = x509.load_pem_x509_certificates(bundle.cert_chain_pem)[0].public_key()
    assert isinstance(vcek, ec.EllipticCurvePublicKey)
    assert report_signature_valid(parse_report_response(data), vcek)


def test_firmware_failures_are_errors_with_their_codes() -> None:
    with pytest.raises(SevGuestError, match="status 0x16") as caught:
        parse_report_response(response_buffer(bytes(1184), status=0x16))
    assert caught.value.fw_error == 0x16
    with pytest.raises(SevGuestError, match="report_size 1000"):
        parse_report_response(response_buffer(bytes(1184), size=1000))
    with pytest.raises(SevGuestError, match="too short"):
        parse_report_response(bytes(100))


def test_the_ioctl_on_a_device_that_is_not_sev_guest_fails_cleanly() -> None:
    with pytest.raises(SevGuestError, match="SNP_GET_REPORT failed"):
        sev_guest.get_report(bytes(64), device="/dev/null")


def test_kds_urls_name_chip_and_tcb() -> None:
    chip = bytes(range(64))
    tcb = TcbVersion(bootloader=4, tee=1, snp=22, microcode=213)
    report = AttestationReport(chip_id=chip, reported_tcb=tcb.to_raw())
    assert kds_vcek_url(report) == (
        f"https://kdsintf.amd.com/vcek/v1/Milan/{chip.hex()}?blSPL=4&teeSPL=1&snpSPL=22&ucodeSPL=213"
    )
    turin = AttestationReport(chip_id=chip, reported_tcb=TcbVersion(fmc=1, microcode=2).to_raw("Turin"))
    assert kds_vcek_url(turin, "Turin").endswith(
        f"/Turin/{chip[:8].hex()}?fmcSPL=1&blSPL=0&teeSPL=0&snpSPL=0&ucodeSPL=2"
    )


def test_certificates_from_files_may_be_der_or_pem(tee: SoftwareTee, tmp_path: Path) -> None:
    vcek_pem = run(tee.report(bytes(64))).cert_chain_pem
    vcek = x509.load_pem_x509_certificates(vcek_pem)[0]
    (tmp_path / "vcek.der").write_bytes(vcek.public_bytes(serialization.Encoding.DER))
    (tmp_path / "chain.pem").write_bytes(tee.amd.ask_pem + tee.amd.ark_pem)
    provider = SevGuestEvidence(vcek_file=tmp_path / "vcek.der", chain_file=tmp_path / "chain.pem")
    chain = run(provider._chain(AttestationReport()))
    assert (
        x509.load_pem_x509_certificates(chain)[0] == vcek and len(x509.load_pem_x509_certificates(chain)) == 3
    )
    with pytest.raises(ValueError, match="give both"):
        SevGuestEvidence(vcek_file=tmp_path / "vcek.der")


@pytest.mark.hardware
@pytest.mark.skipif(not SevGuestEvidence.available(), reason="needs an SEV-SNP guest (/dev/sev-guest)")
def test_a_real_guest_report() -> None:  # pragma: no cover - hardware only
    raw = sev_guest.get_report(b"\x42" * 64)
    report = AttestationReport.parse(raw)
    assert report.report_data == b"\x42" * 64 and report.pack() == raw
    assert report.signature_algo == 1 and report.vmpl == 0

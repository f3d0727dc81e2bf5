"""Evidence from a real AMD SEV-SNP guest: the ``SNP_GET_REPORT`` ioctl on ``/dev/sev-guest``.

The kernel's guest driver asks the AMD secure processor for a report over the encrypted guest channel;
userspace talks to it through one ioctl whose structures are the Linux UAPI
(``include/uapi/linux/sev-guest.h``)::

    struct snp_report_req  { __u8 user_data[64]; __u32 vmpl; __u8 rsvd[28]; };          // 96 bytes
    struct snp_report_resp { __u8 data[4000]; };
    struct snp_guest_request_ioctl {
        __u8 msg_version;                      // must be non-zero (1)
        __u64 req_data; __u64 resp_data;       // user addresses of the two structs above
        union { __u64 exitinfo2; struct { __u32 fw_error; __u32 vmm_error; }; };
    };                                         // 32 bytes with natural alignment
    #define SNP_GET_REPORT _IOWR('S', 0x0, struct snp_guest_request_ioctl)   // = 0xC0205300

``data`` holds the firmware's MSG_REPORT_RSP: ``status`` (u32, 0 = success), ``report_size`` (u32, 1184),
24 reserved bytes, then the ATTESTATION_REPORT at offset 0x20.

Verified with the ``search`` tool against copies of the UAPI header (AOSP bionic's generated
``libc/kernel/uapi/linux/sev-guest.h``: the three structs, the union, ``SNP_GUEST_REQ_IOC_TYPE 'S'`` and
``SNP_GET_REPORT``) and against two independent guest tools that place the report at 0x20 after the
status and size words (libkrun ``snp_attest.h``; a Rust client with ``SNP_REPORT_RESP_HEADER_BYTES =
0x20``). The ioctl number is computed here with the generic Linux ``_IOC`` encoding (dir << 30 | size << 16
| type << 8 | nr), which is what x86-64 uses. Not run: this machine has no SEV-SNP guest device.

The report alone does not carry its certificates. The VCEK is fetched for the report's CHIP_ID and
REPORTED_TCB from AMD KDS (``https://kdsintf.amd.com/vcek/v1/{product}/{chip id hex}?blSPL=…&teeSPL=…&
snpSPL=…&ucodeSPL=…``, DER; ``…/vcek/v1/{product}/cert_chain`` gives ASK then ARK as PEM; azure.md §4.4),
or read from files an operator placed (hosts without egress). KDS answers are cached per chip and TCB for
the life of the provider: a VCEK changes only with the TCB, and KDS rate-limits.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import struct
from pathlib import Path
from typing import Final

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vigil.training_node.evidence import REPORT_DATA_SIZE, EvidenceBundle
from vigil.training_node.snp import REPORT_SIZE, AttestationReport

DEVICE: Final = "/dev/sev-guest"
KDS_URL: Final = "https://kdsintf.amd.com"
MSG_VERSION: Final = 1
RESPONSE_HEADER: Final = 0x20
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2


class SnpReportReq(ctypes.Structure):
    _fields_ = (("user_data", ctypes.c_uint8 * 64), ("vmpl", ctypes.c_uint32), ("rsvd", ctypes.c_uint8 * 28))


class SnpReportResp(ctypes.Structure):
    _fields_ = (("data", ctypes.c_uint8 * 4000),)


class SnpGuestRequestIoctl(ctypes.Structure):
    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


def _iowr(kind: str, nr: int, size: int) -> int:
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (ord(kind) << 8) | nr


SNP_GET_REPORT: Final = _iowr("S", 0x0, ctypes.sizeof(SnpGuestRequestIoctl))


class SevGuestError(RuntimeError):
    """The device refused the request; carries the firmware and hypervisor error words."""

    def __init__(self, message: str, fw_error: int = 0, vmm_error: int = 0) -> None:
        self.fw_error = fw_error
        self.vmm_error = vmm_error
        super().__init__(f"{message} (fw_error={fw_error:#x}, vmm_error={vmm_error:#x})")


def pack_report_request(report_data: bytes, vmpl: int = 0) -> bytes:
    """``struct snp_report_req`` for ``report_data`` (64 bytes) at ``vmpl`` (0–3)."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report data is {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    if not 0 <= vmpl <= 3:
        raise ValueError("VMPL is 0..3")
    return struct.pack("<64sI28s", report_data, vmpl, bytes(28))


def parse_report_response(data: bytes) -> bytes:
    """The 1184-byte report inside ``snp_report_resp.data``; SevGuestError on a firmware failure."""
    if len(data) < RESPONSE_HEADER + REPORT_SIZE:
        raise SevGuestError(f"report response is {len(data)} bytes, too short")
    status, size = struct.unpack_from("<II", data, 0)
    if status != 0:
        raise SevGuestError(f"MSG_REPORT_RSP status {status:#x}", fw_error=status)
    if size != REPORT_SIZE:
        raise SevGuestError(f"MSG_REPORT_RSP report_size {size}, expected {REPORT_SIZE}")
    return bytes(data[RESPONSE_HEADER : RESPONSE_HEADER + REPORT_SIZE])


def get_report(report_data: bytes, vmpl: int = 0, device: str = DEVICE) -> bytes:
    """One report from the device (blocking; the firmware answers in milliseconds)."""
    request = SnpReportReq.from_buffer_copy(pack_report_request(report_data, vmpl))
    response = SnpReportResp()
    ioctl = SnpGuestRequestIoctl(
        msg_version=MSG_VERSION,
        req_data=ctypes.addressof(request),
        resp_data=ctypes.addressof(response),
        exitinfo2=0,
    )
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, SNP_GET_REPORT, ioctl, True)
    except OSError as exc:
        info = ioctl.exitinfo2
        raise SevGuestError(f"SNP_GET_REPORT failed: {exc.strerror}", info & 0xFFFFFFFF, info >> 32) from None
    finally:
        os.close(fd)
    return parse_report_response(bytes(response.data))


def kds_vcek_url(report: AttestationReport, product: str = "Milan", base: str = KDS_URL) -> str:
    """Where AMD KDS serves the VCEK for the report's chip and reported TCB."""
    tcb = report.tcb("reported", product)
    hwid = report.chip_id[:8] if product == "Turin" else report.chip_id
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if product == "Turin":
        query = f"fmcSPL={tcb.fmc}&" + query
    return f"{base}/vcek/v1/{product}/{hwid.hex()}?{query}"


class SevGuestEvidence:
    """The :class:`~vigil.training_node.evidence.Evidence` of a real SEV-SNP guest (module docstring)."""

    def __init__(
        self,
        *,
        device: str = DEVICE,
        vmpl: int = 0,
        product: str = "Milan",
        vcek_file: Path | None = None,
        chain_file: Path | None = None,
        kds_url: str = KDS_URL,
        timeout: float = 10.0,
    ) -> None:
        if (vcek_file is None) != (chain_file is None):
            raise ValueError("give both vcek_file and chain_file, or neither (fetch from AMD KDS)")
        self._device = device
        self._vmpl = vmpl
        self._product = product
        self._files = (vcek_file, chain_file)
        self._kds = kds_url.rstrip("/")
        self._timeout = timeout
        self._cache: dict[str, bytes] = {}

    @staticmethod
    def available(device: str = DEVICE) -> bool:
        return Path(device).exists()

    async def report(self, report_data: bytes) -> EvidenceBundle:
        raw = await asyncio.to_thread(get_report, report_data, self._vmpl, self._device)
        chain = await self._chain(AttestationReport.parse(raw))
        return EvidenceBundle(report=raw, cert_chain_pem=chain, provider="sev-guest")

    async def _chain(self, report: AttestationReport) -> bytes:
        vcek_file, chain_file = self._files
        if vcek_file is not None and chain_file is not None:
            return _as_pem(vcek_file.read_bytes()) + chain_file.read_bytes()
        url = kds_vcek_url(report, self._product, self._kds)
        if url not in self._cache:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                vcek = await client.get(url)
                vcek.raise_for_status()
                chain = await client.get(f"{self._kds}/vcek/v1/{self._product}/cert_chain")
                chain.raise_for_status()
            self._cache[url] = _as_pem(vcek.content) + chain.content
        return self._cache[url]

    def __repr__(self) -> str:
        return f"SevGuestEvidence(device={self._device!r}, vmpl={self._vmpl}, product={self._product!r})"


def _as_pem(data: bytes) -> bytes:
    """A certificate as PEM, whether it came as DER (KDS) or PEM (a file)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return data
    return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.PEM)

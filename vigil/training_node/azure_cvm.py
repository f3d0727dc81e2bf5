"""Evidence from an Azure confidential VM (SEV-SNP): the paravisor's HCL report in the vTPM, and MAA.

On an Azure CVM the guest never opens ``/dev/sev-guest``: the paravisor (HCL) obtains the SNP report and
publishes an *HCL report* in vTPM NV index ``0x01400001`` (azure.md §4.1)::

    0x000  header                32 bytes
    0x020  hardware report     1184 bytes   the SEV-SNP ATTESTATION_REPORT (:mod:`.snp`)
    0x4C0  IGVM request data     20 bytes   data_size, version, report_type, hash_type, variable_data_size
    0x4D4  variable data          n bytes   runtime data JSON: keys (HCLAkPub, HCLEkPub), vm-configuration,
                                             user-data

and REPORT_DATA[0:32] = SHA-256(variable data), zero padded: the paravisor binds *its* runtime data, so a
caller's 64 bytes cannot be REPORT_DATA directly. They are written to NV index ``0x01400002`` first; the
paravisor copies them into the runtime JSON (``user-data``, hex) of the next HCL report, so the chain is
nonce → user-data → SHA-256 → REPORT_DATA, and a verifier checks both links (:func:`runtime_data_bound`,
:func:`user_data`). Freshness on Azure otherwise comes from MAA (``x-ms-runtime.client-payload``).

The VCEK chain comes from the instance metadata service (IMDS THIM:
``GET http://169.254.169.254/metadata/THIM/amd/certification``, header ``Metadata: true``, JSON
``vcekCert`` and ``certificateChain``, both PEM). The token comes from MAA ``POST
{provider}/attest/SevSnpVm?api-version=2022-08-01`` with the body of §4.1, built by :func:`maa_request`::

    {"report": base64url(JSON {"SnpReport": base64url(report), "VcekCertChain": base64url(PEM chain)}),
     "runtimeData": {"data": base64url(runtime data), "dataType": "JSON"}, "nonce": "…"}

Verified with the ``search`` tool: the NV indexes, the 32-byte header, the 1184-byte hardware report and
the variable data at 32 + 1184 + 20 with its size at +16 (a Microsoft engineer's ``cvm-playground`` script
and the ``azure-vtpm-hcl`` parser, both citing ``az-cvm-vtpm``'s ``hcl/mod.rs``; the SHA-256 binding is
stated there too). Not verified: the exact name of the ``user-data`` key in the runtime JSON (recalled
from ``az-cvm-vtpm``), and the need to wait after writing NV ``0x01400002`` (the script sleeps 3 s; kept
configurable as ``settle``). Nothing here has run on an Azure CVM.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from vigil.training_node.evidence import REPORT_DATA_SIZE, EvidenceBundle
from vigil.training_node.snp import REPORT_SIZE, AttestationReport

HCL_REPORT_NV_INDEX: Final = 0x01400001
USER_DATA_NV_INDEX: Final = 0x01400002
HCL_HEADER_SIZE: Final = 32
SNP_REPORT_OFFSET: Final = HCL_HEADER_SIZE
IGVM_DATA_OFFSET: Final = SNP_REPORT_OFFSET + REPORT_SIZE
IGVM_DATA_FIXED_SIZE: Final = 20
RUNTIME_DATA_OFFSET: Final = IGVM_DATA_OFFSET + IGVM_DATA_FIXED_SIZE
THIM_URL: Final = "http://169.254.169.254/metadata/THIM/amd/certification"
MAA_API_VERSION: Final = "2022-08-01"


class AzureCvmError(RuntimeError):
    """The vTPM, IMDS or MAA did not give what an Azure CVM should."""


@dataclass(frozen=True, slots=True)
class HclReport:
    snp_report: bytes
    report_type: int
    runtime_data: bytes

    def runtime_claims(self) -> dict[str, Any]:
        """The runtime data JSON (keys, vm-configuration, user-data)."""
        try:
            value = json.loads(self.runtime_data)
        except ValueError:
            raise AzureCvmError("the HCL runtime data is not JSON") from None
        if not isinstance(value, dict):
            raise AzureCvmError("the HCL runtime data is not a JSON object")
        return value


def parse_hcl_report(blob: bytes) -> HclReport:
    """The SNP report and the runtime data of an HCL report (layout in the module docstring)."""
    if len(blob) < RUNTIME_DATA_OFFSET:
        raise AzureCvmError(f"HCL report is {len(blob)} bytes, shorter than its fixed part")
    report_type, size = struct.unpack_from("<I4xI", blob, IGVM_DATA_OFFSET + 8)
    if RUNTIME_DATA_OFFSET + size > len(blob):
        raise AzureCvmError(f"HCL runtime data of {size} bytes runs past the end of the report")
    return HclReport(
        snp_report=bytes(blob[SNP_REPORT_OFFSET:IGVM_DATA_OFFSET]),
        report_type=report_type,
        runtime_data=bytes(blob[RUNTIME_DATA_OFFSET : RUNTIME_DATA_OFFSET + size]),
    )


def runtime_data_bound(hcl: HclReport) -> bool:
    """Whether REPORT_DATA is SHA-256(runtime data) followed by 32 zero bytes."""
    report_data = AttestationReport.parse(hcl.snp_report).report_data
    return report_data == hashlib.sha256(hcl.runtime_data).digest() + bytes(32)


def user_data(hcl: HclReport) -> bytes | None:
    """The caller's 64 bytes as the paravisor echoed them in the runtime data, if present."""
    value = hcl.runtime_claims().get("user-data")
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def thim_chain(document: dict[str, Any]) -> bytes:
    """The PEM chain (VCEK, then ASK and ARK) from an IMDS THIM answer."""
    vcek, chain = document.get("vcekCert"), document.get("certificateChain")
    if not isinstance(vcek, str) or not isinstance(chain, str):
        raise AzureCvmError("THIM answer lacks vcekCert or certificateChain")
    return (vcek.strip() + "\n" + chain.strip() + "\n").encode()


def maa_request(
    snp_report: bytes, cert_chain_pem: bytes, runtime_data: bytes, nonce: str | None = None
) -> dict[str, Any]:
    """The body of ``POST /attest/SevSnpVm`` (azure.md §4.1)."""
    if len(snp_report) != REPORT_SIZE:
        raise ValueError(f"an SEV-SNP report is {REPORT_SIZE} bytes")
    inner = {"SnpReport": _b64u(snp_report), "VcekCertChain": _b64u(cert_chain_pem)}
    body: dict[str, Any] = {
        "report": _b64u(json.dumps(inner, separators=(",", ":")).encode()),
        "runtimeData": {"data": _b64u(runtime_data), "dataType": "JSON"},
    }
    return body if nonce is None else body | {"nonce": nonce}


class AzureCvmEvidence:
    """The :class:`~vigil.training_node.evidence.Evidence` of an Azure CVM, and its MAA token."""

    def __init__(
        self,
        *,
        maa_url: str | None = None,
        thim_url: str = THIM_URL,
        tpm2_tools: str = "",
        settle: float = 3.0,
        timeout: float = 10.0,
    ) -> None:
        self._maa = maa_url.rstrip("/") if maa_url else None
        self._thim = thim_url
        self._tools = tpm2_tools.rstrip("/")
        self._settle = settle
        self._timeout = timeout

    @staticmethod
    def available() -> bool:
        """Whether tpm2-tools and a TPM device are present (not proof of a CVM: the NV read is)."""
        return shutil.which("tpm2_nvread") is not None and Path("/dev/tpmrm0").exists()

    async def report(self, report_data: bytes) -> EvidenceBundle:
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(f"report data is {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
        defined = await self._tpm("tpm2_nvreadpublic")
        if f"{USER_DATA_NV_INDEX:#x}:".encode() not in defined.lower():  # listed as "0x1400002:"
            await self._tpm("tpm2_nvdefine", "-C", "o", f"{USER_DATA_NV_INDEX:#x}", "-s", "64")
        await self._tpm("tpm2_nvwrite", "-C", "o", f"{USER_DATA_NV_INDEX:#x}", "-i", "-", stdin=report_data)
        await asyncio.sleep(self._settle)
        hcl = parse_hcl_report(await self._tpm("tpm2_nvread", "-C", "o", f"{HCL_REPORT_NV_INDEX:#x}"))
        if not runtime_data_bound(hcl):
            raise AzureCvmError("the SNP report does not bind the HCL runtime data")
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            answer = await client.get(self._thim, headers={"Metadata": "true"})
            answer.raise_for_status()
        chain = thim_chain(answer.json())
        return EvidenceBundle(hcl.snp_report, chain, runtime_data=hcl.runtime_data, provider="azure-cvm")

    async def maa_token(self, bundle: EvidenceBundle, nonce: str | None = None) -> str:
        """An MAA token for the bundle (``/attest/SevSnpVm``); the verifier is
        :func:`~vigil.training_node.claims.verify_maa_token`."""
        if self._maa is None:
            raise AzureCvmError("no MAA provider URL configured")
        if bundle.runtime_data is None:
            raise AzureCvmError("an Azure CVM bundle carries the HCL runtime data")
        body = maa_request(bundle.report, bundle.cert_chain_pem, bundle.runtime_data, nonce)
        url = f"{self._maa}/attest/SevSnpVm?api-version={MAA_API_VERSION}"
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            answer = await client.post(url, json=body)
            answer.raise_for_status()
        token = answer.json().get("token")
        if not isinstance(token, str):
            raise AzureCvmError("MAA answered without a token")
        return token

    async def _tpm(self, tool: str, *args: str, stdin: bytes | None = None) -> bytes:
        program = f"{self._tools}/{tool}" if self._tools else tool
        proc = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate(stdin)
        if proc.returncode != 0:
            raise AzureCvmError(f"{tool} failed ({proc.returncode}): {err.decode(errors='replace')[:200]}")
        return out

    def __repr__(self) -> str:
        return f"AzureCvmEvidence(maa_url={self._maa!r})"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")

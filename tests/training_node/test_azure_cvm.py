"""The Azure CVM provider: HCL report extraction, the runtime-data binding, IMDS THIM and the MAA request.

The vTPM tools are small shell fakes in a temporary folder and IMDS/MAA are loopback HTTP servers: the
provider's own code (subprocess calls, offsets, request bodies) runs for real against them. The
hardware test reads the real NV index and runs only on an Azure confidential VM.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.platform.local.tokens import TokenIssuer
from vigil.training_node.azure_cvm import (
    HCL_REPORT_NV_INDEX,
    AzureCvmError,
    AzureCvmEvidence,
    maa_request,
    parse_hcl_report,
    runtime_data_bound,
    thim_chain,
    user_data,
)
from vigil.training_node.claims import AttestationPolicy, report_claims, verify_maa_token
from vigil.training_node.evidence import SoftwareTee
from vigil.training_node.snp import AttestationReport

from .support import GOOD_MEASUREMENT, MIN_TCB, run


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hcl_report(tee: SoftwareTee, caller_data: bytes, pad_to: int = 2600) -> tuple[bytes, bytes, bytes]:
    """(HCL blob, SNP report, runtime data) in the paravisor's layout, the SNP report really signed."""
    runtime = json.dumps(
        {
            "keys": [{"kid": "HCLAkPub", "kty": "RSA", "key_ops": ["sign"], "e": "AQAB", "n": "xW3k"}],
            "vm-configuration": {"secure-boot": True, "tpm-enabled": True, "vmUniqueId": "5E2A9C14"},
            "user-data": caller_data.hex(),
        }
    ).encode()
    snp = run(tee.report(hashlib.sha256(runtime).digest() + bytes(32))).report
    header = b"HCLA" + struct.pack("<IIII", 1, 0, 2, 0) + bytes(12)
    igvm = struct.pack("<IIIII", 20 + len(runtime), 1, 2, 1, len(runtime))
    blob = header + snp + igvm + runtime
    return blob + bytes(max(0, pad_to - len(blob))), snp, runtime


def test_the_snp_report_is_at_offset_32_and_the_runtime_data_after_the_igvm_header(tee: SoftwareTee) -> None:
    blob, snp, runtime = hcl_report(tee, b"\x07" * 64)
    assert blob[32 : 32 + 1184] == snp and blob[1236 : 1236 + len(runtime)] == runtime
    hcl = parse_hcl_report(blob)
    assert (hcl.snp_report, hcl.runtime_data, hcl.report_type) == (snp, runtime, 2)
    assert runtime_data_bound(hcl) and user_data(hcl) == b"\x07" * 64
    assert hcl.runtime_claims()["vm-configuration"]["tpm-enabled"] is True
    tampered = parse_hcl_report(blob.replace(b'"tpm-enabled": true', b'"tpm-enabled": fals'))
    assert not runtime_data_bound(tampered)


def test_truncated_or_inconsistent_hcl_reports_are_refused(tee: SoftwareTee) -> None:
    blob, _, runtime = hcl_report(tee, bytes(64), pad_to=0)
    with pytest.raises(AzureCvmError, match="shorter than its fixed part"):
        parse_hcl_report(blob[:1235])
    with pytest.raises(AzureCvmError, match="runs past the end"):
        parse_hcl_report(blob[:-1])
    not_json = parse_hcl_report(blob[: 1236 - 4] + struct.pack("<I", 3) + b"{x}")
    with pytest.raises(AzureCvmError, match="not JSON"):
        not_json.runtime_claims()
    assert len(runtime) > 3


def test_the_maa_request_body_is_the_documented_shape(tee: SoftwareTee) -> None:
    bundle = run(tee.report(bytes(64)))
    body = maa_request(bundle.report, bundle.cert_chain_pem, b'{"keys":[]}', nonce="n-1")
    assert set(body) == {"report", "runtimeData", "nonce"} and body["nonce"] == "n-1"
    inner = json.loads(b64u_decode(body["report"]))
    assert set(inner) == {"SnpReport", "VcekCertChain"}
    assert b64u_decode(inner["SnpReport"]) == bundle.report
    assert b64u_decode(inner["VcekCertChain"]) == bundle.cert_chain_pem
    assert body["runtimeData"]["dataType"] == "JSON"
    assert b64u_decode(body["runtimeData"]["data"]) == b'{"keys":[]}'
    assert "=" not in body["report"] and "nonce" not in maa_request(bundle.report, b"", b"")
    with pytest.raises(ValueError, match="1184"):
        maa_request(b"short", b"", b"")


def test_thim_answers_become_a_pem_chain(tee: SoftwareTee) -> None:
    chain = thim_chain({"vcekCert": "VCEK PEM\n", "certificateChain": "ASK PEM\nARK PEM", "tcbm": "DB1600"})
    assert chain == b"VCEK PEM\nASK PEM\nARK PEM\n"
    with pytest.raises(AzureCvmError, match="lacks vcekCert"):
        thim_chain({"vcekCert": "x"})


class _Server:
    """A loopback HTTP server answering THIM and MAA requests and remembering them."""

    def __init__(self, chain: bytes, token: str) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path, dict(self.headers), b""))
                if self.headers.get("Metadata") != "true":
                    return self._answer(400, {"error": "Metadata header missing"})
                vcek, rest = chain.split(b"-----END CERTIFICATE-----\n", 1)
                vcek += b"-----END CERTIFICATE-----\n"
                return self._answer(200, {"vcekCert": vcek.decode(), "certificateChain": rest.decode()})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(("POST", self.path, dict(self.headers), body))
                self._answer(200, {"token": token})

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_tpm(tmp_path: Path) -> Path:
    """tpm2-tools fakes: nvreadpublic lists what nvdefine defined, nvwrite keeps stdin, nvread cats."""
    tools = tmp_path / "tools"
    tools.mkdir()
    scripts = {
        "tpm2_nvreadpublic": f'cat "{tmp_path}/nvpublic" 2>/dev/null; exit 0',
        "tpm2_nvdefine": f'echo "$@" > "{tmp_path}/defined"; printf "0x1400002:\\n  size: 64\\n" > "{tmp_path}/nvpublic"',
        "tpm2_nvwrite": f'echo "$@" > "{tmp_path}/nvwrite.args"; cat > "{tmp_path}/userdata"',
        "tpm2_nvread": f'echo "$@" > "{tmp_path}/nvread.args"; cat "{tmp_path}/hcl.bin"',
    }
    for name, body in scripts.items():
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    return tmp_path


@pytest.fixture
def servers(tee: SoftwareTee) -> Iterator[tuple[_Server, TokenIssuer]]:
    issuer = TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=2048), "https://maa.test")
    report = AttestationReport.parse(run(tee.report(bytes(64))).report)
    claims = report_claims(report) | {"x-ms-ver": "1.0", "x-ms-compliance-status": "azure-compliant-cvm"}
    claims["x-ms-runtime"] = {"client-payload": {"nonce": "n-7"}}
    server = _Server(run(tee.report(bytes(64))).cert_chain_pem, issuer.issue(claims, ttl=600))
    yield server, issuer
    server.close()


def test_the_provider_writes_user_data_reads_the_hcl_report_and_asks_maa(
    tee: SoftwareTee, fake_tpm: Path, servers: tuple[_Server, TokenIssuer]
) -> None:
    server, issuer = servers
    caller = bytes(range(64))
    blob, snp, runtime = hcl_report(tee, caller)
    (fake_tpm / "hcl.bin").write_bytes(blob)
    provider = AzureCvmEvidence(
        maa_url=server.url,
        thim_url=server.url + "/metadata/THIM/amd/certification",
        tpm2_tools=str(fake_tpm / "tools"),
        settle=0,
    )
    bundle = run(provider.report(caller))
    assert (fake_tpm / "userdata").read_bytes() == caller
    assert (fake_tpm / "defined").read_text().split() == ["-C", "o", "0x1400002", "-s", "64"]
    assert (fake_tpm / "nvread.args").read_text().split() == ["-C", "o", f"{HCL_REPORT_NV_INDEX:#x}"]
    assert (bundle.report, bundle.runtime_data, bundle.provider) == (snp, runtime, "azure-cvm")
    assert bundle.cert_chain_pem.count(b"BEGIN CERTIFICATE") == 3
    assert server.requests[0][1] == "/metadata/THIM/amd/certification"
    assert server.requests[0][2]["Metadata"] == "true"
    token = run(provider.maa_token(bundle, nonce="n-7"))
    method, path, headers, body = server.requests[-1]
    assert (method, path) == ("POST", "/attest/SevSnpVm?api-version=2022-08-01")
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == maa_request(snp, bundle.cert_chain_pem, runtime, "n-7")
    policy = AttestationPolicy.build([GOOD_MEASUREMENT], MIN_TCB)
    verified = verify_maa_token(
        token, issuers=[issuer.issuer], jwks={issuer.issuer: issuer.jwks()}, policy=policy, nonce="n-7"
    )
    assert verified.claims["x-ms-sevsnpvm-launchmeasurement"] == GOOD_MEASUREMENT.hex()
    run(provider.report(caller))  # the NV index now exists: no second nvdefine
    assert (fake_tpm / "defined").read_text().split()[-1] == "64"


def test_an_unbound_hcl_report_or_a_failing_tool_is_an_error(tee: SoftwareTee, fake_tpm: Path) -> None:
    blob, _, _ = hcl_report(tee, bytes(64))
    (fake_tpm / "hcl.bin").write_bytes(blob.replace(b'"secure-boot": true', b'"secure-boot": fals'))
    provider = AzureCvmEvidence(tpm2_tools=str(fake_tpm / "tools"), settle=0)
    with pytest.raises(AzureCvmError, match="does not bind the HCL runtime data"):
        run(provider.report(bytes(64)))
    (fake_tpm / "tools" / "tpm2_nvread").write_text(
        "#!/bin/sh\necho 'ERROR: NV index not defined' >&2\nexit 1\n"
    )
    with pytest.raises(AzureCvmError, match="tpm2_nvread failed"):
        run(provider.report(bytes(64)))


@pytest.mark.hardware
@pytest.mark.skipif(
    not AzureCvmEvidence.available(), reason="needs an Azure confidential VM (vTPM, tpm2-tools)"
)
def test_a_real_azure_cvm_hcl_report() -> None:  # pragma: no cover - hardware only
    bundle = run(AzureCvmEvidence().report(b"\x24" * 64))
    report = AttestationReport.parse(bundle.report)
    assert bundle.runtime_data is not None
    assert report.report_data == hashlib.sha256(bundle.runtime_data).digest() + bytes(32)
    assert json.loads(bundle.runtime_data).get("user-data", "").lower() == "24" * 64

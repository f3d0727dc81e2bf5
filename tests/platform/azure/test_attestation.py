"""MaaTokenVerifier against a loopback MAA ``/certs`` endpoint (TLS, JWKS with ``x5c`` as MAA publishes).

The tokens are signed with RS256 keys made here with ``cryptography``; the verifier fetches the issuer's
JWKS over https from the loopback server, as it would from ``https://<provider>.attest.azure.net/certs``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.platform.azure.fake_keyvault import make_server_certificate
from vigil.platform.attestation import TokenVerifier
from vigil.platform.azure.attestation import MaaTokenVerifier
from vigil.platform.errors import ReleaseDeniedError
from vigil.training_node.claims import AttestationPolicy

MEASUREMENT = "3c" * 48
HOST_DATA = "5f" * 32
POLICY = AttestationPolicy.build(
    [MEASUREMENT], {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}, [HOST_DATA]
)


class Maa:
    """A loopback MAA provider: serves ``/certs`` (a JWKS of ``x5c`` certificates) and counts fetches."""

    def __init__(self, tmp: Path) -> None:
        ca, cert, key = make_server_certificate(tmp)
        self.ca_path = str(ca)
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        #: serve a non-JSON body instead of the JWKS (an endpoint in trouble)
        self.garbage = False
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.jwks() if self.path == "/certs" else {}).encode()
                if outer.garbage:
                    body = b"<html>maintenance</html>"
                self.send_response(200 if self.path == "/certs" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.issuer = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def add_key(self, kid: str, key: rsa.RSAPrivateKey) -> None:
        self.keys[kid] = key

    def jwks(self) -> dict[str, Any]:
        entries = []
        for kid, key in self.keys.items():
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(key, hashes.SHA256())
            )
            der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
            entries.append({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "x5c": [der]})
        return {"keys": entries}

    def token(self, kid: str, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": kid, "jku": f"{self.issuer}/certs", "typ": "JWT"} | header
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers=headers)


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


@pytest.fixture
def maa(tmp_path: Path, rsa_keys: list[rsa.RSAPrivateKey]) -> Iterator[Maa]:
    server = Maa(tmp_path)
    server.add_key("k1", rsa_keys[0])
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def verifier(maa: Maa, **options: Any) -> MaaTokenVerifier:
    return MaaTokenVerifier([maa.issuer], POLICY, verify_tls=maa.ca_path, **options)


def snp_claims(issuer: str, *, nested: bool = False, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    snp: dict[str, Any] = {
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-cvm",
        "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT,
        "x-ms-sevsnpvm-hostdata": HOST_DATA,
        "x-ms-sevsnpvm-is-debuggable": False,
        "x-ms-sevsnpvm-migration-allowed": False,
        "x-ms-sevsnpvm-vmpl": 0,
        "x-ms-sevsnpvm-guestsvn": 2,
        "x-ms-sevsnpvm-smt-allowed": True,
        "x-ms-sevsnpvm-bootloader-svn": 3,
        "x-ms-sevsnpvm-tee-svn": 0,
        "x-ms-sevsnpvm-snpfw-svn": 8,
        "x-ms-sevsnpvm-microcode-svn": 115,
    }
    base = {"iss": issuer, "iat": now, "nbf": now, "exp": now + 28800, "x-ms-ver": "1.0"}
    body = base | ({"x-ms-attestation-type": "azurevm", "x-ms-isolation-tee": snp} if nested else snp)
    return {k: v for k, v in (body | changes).items() if v is not None}


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_good_tokens_are_accepted_top_level_and_nested(maa: Maa) -> None:
    check: TokenVerifier = verifier(maa)
    verified = check.verify(maa.token("k1", snp_claims(maa.issuer)))
    assert verified.issuer == maa.issuer
    assert verified.claims["x-ms-sevsnpvm-launchmeasurement"] == MEASUREMENT
    nested = check.verify(maa.token("k1", snp_claims(maa.issuer, nested=True)))
    assert nested.claims["x-ms-isolation-tee"]["x-ms-compliance-status"] == "azure-compliant-cvm"
    assert maa.fetches == 1  # fetched on first use, then cached


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        ("none", "unsupported algorithm"),
        ("hs256", "unsupported algorithm"),
        ("expired", r"expired \(36\d\d s past exp, leeway 60 s; is a clock off\?\)"),
        ("no_exp", "malformed token"),
        ("issuer", "untrusted issuer"),
        ("jku", "jku is not the issuer's /certs"),
        ("debug", "debug policy bit set"),
        ("garbage", "malformed token"),
    ],
)
def test_forged_or_failing_tokens_are_refused(maa: Maa, forge: str, reason: str) -> None:
    claims = snp_claims(maa.issuer)
    if forge == "none":
        header = {"alg": "none", "typ": "JWT", "kid": "k1"}
        token = f"{_b64u(json.dumps(header).encode())}.{_b64u(json.dumps(claims).encode())}."
    elif forge == "hs256":  # HMAC keyed with the issuer's public key, the classic algorithm confusion
        public = (
            maa.keys["k1"]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
        signing_input = f"{_b64u(json.dumps(header).encode())}.{_b64u(json.dumps(claims).encode())}"
        signature = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64u(signature)}"
    elif forge == "expired":
        token = maa.token("k1", snp_claims(maa.issuer, exp=int(time.time()) - 3600))
    elif forge == "no_exp":
        token = maa.token("k1", snp_claims(maa.issuer, exp=None))
    elif forge == "issuer":
        token = maa.token("k1", snp_claims("https://evil.attest.example"))
    elif forge == "jku":
        token = maa.token("k1", claims, jku="https://evil.attest.example/certs")
    elif forge == "debug":
        token = maa.token("k1", snp_claims(maa.issuer, **{"x-ms-sevsnpvm-is-debuggable": True}))
    else:
        token = "a.b.c"
    with pytest.raises(ReleaseDeniedError) as caught:
        verifier(maa).verify(token)
    assert re.fullmatch(reason, caught.value.reason) if forge == "expired" else caught.value.reason == reason
    assert token not in str(caught.value)


def test_key_rollover_refetches_once_and_rate_limits(maa: Maa, rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    now = [1000.0]
    check = verifier(maa, min_refresh=300.0, clock=lambda: now[0])
    check.verify(maa.token("k1", snp_claims(maa.issuer)))
    maa.add_key("k2", rsa_keys[1])  # MAA rolls its signing key
    now[0] += 301
    assert check.verify(maa.token("k2", snp_claims(maa.issuer))).issuer == maa.issuer
    assert maa.fetches == 2
    forged = jwt.encode(snp_claims(maa.issuer), rsa_keys[1], algorithm="RS256", headers={"kid": "made-up"})
    with pytest.raises(ReleaseDeniedError, match="unknown key id"):
        check.verify(forged)
    assert maa.fetches == 2  # within min_refresh: no fetch for a made-up key id
    now[0] += 301
    with pytest.raises(ReleaseDeniedError, match="unknown key id"):
        check.verify(forged)
    assert maa.fetches == 3


def test_a_jwks_endpoint_serving_garbage_keeps_the_last_keys_until_max_age_then_fails_closed(
    maa: Maa,
) -> None:
    """Reliability E6: the last good keys keep verifying for max_age; after it, tokens are refused until a
    fetch succeeds, and the fetches stay min_refresh apart however many tokens arrive."""
    now = [1000.0]
    check = verifier(maa, min_refresh=300.0, max_age=3600.0, clock=lambda: now[0])
    token = maa.token("k1", snp_claims(maa.issuer))
    check.verify(token)
    maa.garbage = True
    now[0] += 3000  # within max_age: the cached keys verify, nothing is fetched
    check.verify(token)
    assert maa.fetches == 1
    now[0] += 700  # past max_age: a fetch is due, it gets garbage, the token is refused
    for _ in range(20):
        with pytest.raises(ReleaseDeniedError, match="no JWKS for the issuer"):
            check.verify(token)
    assert maa.fetches == 2  # one attempt, not twenty
    maa.garbage = False
    now[0] += 301
    assert check.verify(token).issuer == maa.issuer
    assert maa.fetches == 3


def test_warm_fetches_before_first_use_and_http_issuers_are_refused(maa: Maa) -> None:
    check = verifier(maa)
    asyncio.run(check.warm())
    assert maa.fetches == 1 and maa.issuer in repr(check)
    with pytest.raises(ValueError, match="https"):
        MaaTokenVerifier(["http://sharedweu.weu.attest.azure.net"], POLICY)

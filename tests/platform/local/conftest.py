"""Keys and attestation claims shared by the local key vault's tests.

RSA keys are generated once per session (an RSA-3072 key takes a good fraction of a second on a slow
machine); everything else is per test. Claims follow ``../shared/reference/azure.md`` §4.3: a raw
``sevsnpvm`` token with the SEV-SNP claims at top level and the node's encryption key in
``x-ms-runtime.keys``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.platform.local.release import encryption_jwk
from vigil.platform.local.tokens import TokenIssuer

ISSUER = "https://attest.vigil.test"
MEASUREMENT = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)
HOSTDATA = "5f1d8c3a9e7b2046d1c8f3a5b7e9021c4e6a8c0e2f4b6d8a0c2e4f6a8b0d2c4e"

ClaimsFor = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def issuer_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


@pytest.fixture(scope="session")
def rogue_key() -> rsa.RSAPrivateKey:
    """A signing key nobody trusts."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def node_a_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def node_b_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def token_issuer(issuer_key: rsa.RSAPrivateKey) -> TokenIssuer:
    return TokenIssuer(issuer_key, ISSUER)


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def claims_for() -> ClaimsFor:
    """``claims_for(node_key, **overrides)``: sevsnpvm claims carrying the node's encryption key."""

    def build(node_key: rsa.RSAPrivateKey | None, **overrides: Any) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": "azure-compliant-uvm",
            "x-ms-sevsnpvm-is-debuggable": False,
            "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT,
            "x-ms-sevsnpvm-hostdata": HOSTDATA,
            "x-ms-sevsnpvm-vmpl": 0,
            "x-ms-sevsnpvm-guestsvn": 3,
            "x-ms-sevsnpvm-snpfw-svn": 22,
            "x-ms-runtime": {
                "client-payload": {"nonce": "c2VjbW9uLTIwMjYxMTI0LTA5NTU="},
                "keys": [] if node_key is None else [encryption_jwk(node_key.public_key())],
            },
        }
        for name, value in overrides.items():
            claims[name.replace("_", "-")] = value
        return {k: v for k, v in claims.items() if v is not None}

    return build

"""Wrapping released material to the attested node's key, and finding that key in the token's claims."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from vigil.platform.errors import IntegrityError, ReleaseDeniedError
from vigil.platform.local.release import (
    attested_recipient,
    encryption_jwk,
    key_fingerprint,
    load_recipient_key,
    same_public_key,
    token_encryption_key,
    unwrap_as_recipient,
    wrap_for_recipient,
)

from .conftest import ClaimsFor, pem


@pytest.mark.parametrize("size", [1, 17, 32, 64, 600])
def test_wrap_and_unwrap_round_trip(node_a_key: rsa.RSAPrivateKey, size: int) -> None:
    material = os.urandom(size)
    blob = wrap_for_recipient(material, pem(node_a_key))
    assert size < 16 or material not in blob  # a byte or two can occur by chance
    padded = -(-size // 8) * 8
    assert len(blob) == 256 + max(padded + 8, 16)  # RSA-2048 block, then the RFC 5649 wrap
    assert unwrap_as_recipient(blob, node_a_key) == material
    assert wrap_for_recipient(material, pem(node_a_key)) != blob  # a fresh one-time key each time


def test_only_the_recipient_unwraps_and_changes_are_detected(
    node_a_key: rsa.RSAPrivateKey, node_b_key: rsa.RSAPrivateKey
) -> None:
    blob = wrap_for_recipient(os.urandom(32), pem(node_a_key))
    with pytest.raises(IntegrityError, match="does not unwrap with this private key"):
        unwrap_as_recipient(blob, node_b_key)
    for index in (10, 256 + 3, len(blob) - 1):
        damaged = bytearray(blob)
        damaged[index] ^= 0x80
        with pytest.raises(IntegrityError):
            unwrap_as_recipient(bytes(damaged), node_a_key)
    with pytest.raises(IntegrityError, match="truncated"):
        unwrap_as_recipient(blob[:256], node_a_key)


def test_recipient_keys_must_be_rsa_of_2048_bits_or_more() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="1024 bits"):
        load_recipient_key(pem(small))
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match="not an RSA key"):
        load_recipient_key(ec_pem)
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_recipient_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_the_token_key_is_the_first_encryption_key(
    claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey, node_b_key: rsa.RSAPrivateKey
) -> None:
    signing = {**encryption_jwk(node_b_key.public_key(), kid="HCLAkPub"), "key_ops": ["sign"]}
    claims = claims_for(None)
    claims["x-ms-runtime"]["keys"] = [
        signing,
        encryption_jwk(node_a_key.public_key()),
        encryption_jwk(node_b_key.public_key()),
    ]
    found = token_encryption_key(claims)
    assert found is not None and same_public_key(found, node_a_key.public_key())
    by_use = {k: v for k, v in encryption_jwk(node_b_key.public_key()).items() if k != "key_ops"} | {
        "use": "enc"
    }
    claims["x-ms-runtime"]["keys"] = [signing, by_use]
    found = token_encryption_key(claims)
    assert found is not None and same_public_key(found, node_b_key.public_key())
    claims["x-ms-runtime"]["keys"] = [signing]
    assert token_encryption_key(claims) is None


def test_guest_attestation_tokens_nest_the_runtime_under_the_tee(
    node_a_key: rsa.RSAPrivateKey, node_b_key: rsa.RSAPrivateKey
) -> None:
    """azure.md §4.3: the azurevm token has the encryption key at top level, the TEE's HCLAkPub nested."""
    ak = {**encryption_jwk(node_b_key.public_key(), kid="HCLAkPub"), "key_ops": ["sign"]}
    claims: dict[str, Any] = {
        "x-ms-attestation-type": "azurevm",
        "x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm", "x-ms-runtime": {"keys": [ak]}},
        "x-ms-runtime": {"keys": [encryption_jwk(node_a_key.public_key())]},
    }
    found = token_encryption_key(claims)
    assert found is not None and same_public_key(found, node_a_key.public_key())
    # with no top-level runtime keys, the nested runtime is searched
    claims["x-ms-isolation-tee"]["x-ms-runtime"]["keys"].append(encryption_jwk(node_b_key.public_key()))
    del claims["x-ms-runtime"]
    found = token_encryption_key(claims)
    assert found is not None and same_public_key(found, node_b_key.public_key())


@pytest.mark.parametrize(
    "bad",
    [
        {"kty": "EC", "key_ops": ["encrypt"], "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "key_ops": ["encrypt"], "e": "AQAB"},
        {"kty": "RSA", "key_ops": ["encrypt"], "e": 3, "n": "AQAB"},
        {"kty": "RSA", "key_ops": ["encrypt"], "e": "AQAB", "n": ""},
    ],
)
def test_an_unusable_first_encryption_key_fails_closed(
    node_a_key: rsa.RSAPrivateKey, bad: dict[str, Any]
) -> None:
    claims = {"x-ms-runtime": {"keys": [bad, encryption_jwk(node_a_key.public_key())]}}
    assert token_encryption_key(claims) is None


@pytest.mark.parametrize(
    "claims", [{}, {"x-ms-runtime": "keys"}, {"x-ms-runtime": {"keys": {}}}, {"x-ms-isolation-tee": []}]
)
def test_claims_without_runtime_keys(claims: dict[str, Any]) -> None:
    assert token_encryption_key(claims) is None


def test_attested_recipient_checks_every_step(
    claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey, node_b_key: rsa.RSAPrivateKey
) -> None:
    claims = claims_for(node_a_key)
    assert same_public_key(attested_recipient(claims, pem(node_a_key)), node_a_key.public_key())
    with pytest.raises(ReleaseDeniedError, match="recipient key is not the one the token carries"):
        attested_recipient(claims, pem(node_b_key))
    with pytest.raises(ReleaseDeniedError, match="carries no encryption key"):
        attested_recipient(claims_for(None), pem(node_a_key))
    with pytest.raises(ReleaseDeniedError, match="not a PEM public key"):
        attested_recipient(claims, b"garbage")


def test_fingerprints_and_equality(node_a_key: rsa.RSAPrivateKey, node_b_key: rsa.RSAPrivateKey) -> None:
    a, b = node_a_key.public_key(), node_b_key.public_key()
    assert same_public_key(a, load_recipient_key(pem(node_a_key)))
    assert not same_public_key(a, b)
    assert key_fingerprint(a) == key_fingerprint(load_recipient_key(pem(node_a_key)))
    assert key_fingerprint(a) != key_fingerprint(b) and len(key_fingerprint(a)) == 64
    rebuilt = token_encryption_key({"x-ms-runtime": {"keys": [encryption_jwk(a)]}})
    assert rebuilt is not None and rebuilt.public_numbers() == a.public_numbers()

"""Key release to an attested node: wrapping to the node's public key, and unwrapping on the node.

A released key must be readable by the attested node and by nobody else, including whoever carried the
request. So the material is never returned in clear: it is wrapped to an RSA public key that the
attestation token itself carries (``x-ms-runtime.keys``, the key the TEE generated and the attestation
service saw in the evidence). A stolen token is then useless to the thief: the vault refuses any
recipient key but the token's, and only the node holds the matching private key.

Wire layout (Azure Key Vault's ``RSA_AES_KEY_WRAP_256``: PKCS#11 v2.40 ``CKM_RSA_AES_KEY_WRAP`` with
OAEP's hash fixed to SHA-256; Azure's plain ``CKM_RSA_AES_KEY_WRAP`` name means SHA-1)::

    RSA-OAEP(SHA-256, MGF1-SHA-256)(one-time AES-256 key)   -- exactly modulus-size bytes
    ‖ AES key wrap with padding (RFC 5649)(material) under that one-time key

RSA alone could carry 32 bytes; the two-layer form is kept so that the same code unwraps whatever Azure
releases (RSA and EC private keys are longer than one RSA block). The one-time key is fresh per release and
never stored.

:func:`token_encryption_key` picks the recipient key as Azure does: the first JWK in the token's runtime
keys (top level first, then under ``x-ms-isolation-tee``, where guest-attestation tokens nest the TEE's
claims) whose ``key_ops`` contain ``"encrypt"`` or whose ``use`` is ``"enc"``. When that key is unusable
(not RSA, malformed) the answer is None rather than the next key: fail closed, like Azure.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from vigil.platform.errors import IntegrityError, ReleaseDeniedError

ALGORITHM: Final = "RSA_AES_KEY_WRAP_256"
MIN_RECIPIENT_BITS: Final = 2048
_ONE_TIME_KEY_SIZE: Final = 32


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def load_recipient_key(pem: bytes) -> rsa.RSAPublicKey:
    """The RSA public key in ``pem`` (SubjectPublicKeyInfo or PKCS#1); ValueError when it is not one, or
    is shorter than 2048 bits."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, AttributeError):
        raise ValueError("the recipient key is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the recipient key is not an RSA key")
    if key.key_size < MIN_RECIPIENT_BITS:
        raise ValueError(f"the recipient key has {key.key_size} bits, at least {MIN_RECIPIENT_BITS} needed")
    return key


def wrap_for_recipient(material: bytes, recipient_public_key_pem: bytes) -> bytes:
    """``material`` wrapped to the recipient's RSA key (layout in the module docstring)."""
    recipient = load_recipient_key(recipient_public_key_pem)
    one_time = os.urandom(_ONE_TIME_KEY_SIZE)
    return recipient.encrypt(one_time, _oaep()) + aes_key_wrap_with_padding(one_time, material)


def unwrap_as_recipient(blob: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """The material of a :func:`wrap_for_recipient` result, on the node holding the private key.

    IntegrityError when the blob was not wrapped to this key or was changed on the way.
    """
    size = private_key.key_size // 8
    if len(blob) <= size:
        raise IntegrityError("the released key is truncated")
    try:
        one_time = private_key.decrypt(blob[:size], _oaep())
        return aes_key_unwrap_with_padding(one_time, blob[size:])
    except (ValueError, InvalidUnwrap):
        raise IntegrityError("the released key does not unwrap with this private key") from None


def token_encryption_key(claims: Mapping[str, Any]) -> rsa.RSAPublicKey | None:
    """The recipient key a token carries (see module docstring), or None when it carries none usable."""
    for runtime in _runtimes(claims):
        keys = runtime.get("keys")
        if not isinstance(keys, list):
            continue
        for jwk in keys:
            if isinstance(jwk, Mapping) and _is_encryption_key(jwk):
                return _rsa_from_jwk(jwk)
    return None


def encryption_jwk(public_key: rsa.RSAPublicKey, kid: str = "TpmEphemeralEncryptionKey") -> dict[str, Any]:
    """The JWK a node puts in its runtime data so that a token carries its encryption key."""
    numbers = public_key.public_numbers()
    e, n = _b64u_int(numbers.e), _b64u_int(numbers.n)
    return {"kid": kid, "kty": "RSA", "key_ops": ["encrypt"], "e": e, "n": n}


def attested_recipient(claims: Mapping[str, Any], recipient_public_key_pem: bytes) -> rsa.RSAPublicKey:
    """The recipient key, when it is the encryption key the verified ``claims`` carry; ReleaseDeniedError
    otherwise: a token may only ever get a key wrapped to the node it attests."""
    try:
        recipient = load_recipient_key(recipient_public_key_pem)
    except ValueError as exc:
        raise ReleaseDeniedError(str(exc)) from None
    carried = token_encryption_key(claims)
    if carried is None:
        raise ReleaseDeniedError("the token carries no encryption key")
    if not same_public_key(recipient, carried):
        raise ReleaseDeniedError("recipient key is not the one the token carries")
    return recipient


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    """Whether two public key objects are the same key (their SubjectPublicKeyInfo encodings agree)."""
    return _spki(a) == _spki(b)


def key_fingerprint(key: PublicKeyTypes) -> str:
    """SHA-256 hex of the SubjectPublicKeyInfo: names a recipient in events without copying its key."""
    return hashlib.sha256(_spki(key)).hexdigest()


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _runtimes(claims: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for scope in (claims, claims.get("x-ms-isolation-tee")):
        if isinstance(scope, Mapping) and isinstance(scope.get("x-ms-runtime"), Mapping):
            found.append(scope["x-ms-runtime"])
    return found


def _is_encryption_key(jwk: Mapping[str, Any]) -> bool:
    ops = jwk.get("key_ops")
    return (isinstance(ops, list) and "encrypt" in ops) or jwk.get("use") == "enc"


def _rsa_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey | None:
    if jwk.get("kty") != "RSA":
        return None
    try:
        numbers = rsa.RSAPublicNumbers(e=_int_b64u(jwk["e"]), n=_int_b64u(jwk["n"]))
        return numbers.public_key()
    except (KeyError, TypeError, ValueError):
        return None


def _b64u_int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _int_b64u(text: object) -> int:
    if not isinstance(text, str) or not text:
        raise ValueError("not a base64url string")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return int.from_bytes(raw, "big")

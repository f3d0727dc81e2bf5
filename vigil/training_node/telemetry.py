"""How a training node signs its telemetry, and how anyone checks it: one definition for both sides.

A node signs every ``vigil.telemetry/1`` record with the ephemeral RSA key it attested with (the key the
attestation bound into ``report_data`` and the token carries in ``x-ms-runtime.keys``). The signature is
RSA-PSS with SHA-256 (MGF1-SHA-256, 32-byte salt) over :func:`canonical`: the record without ``sig`` as
JSON with sorted keys, no spaces and UTF-8 text, so signer and verifier serialise the same bytes whatever
their JSON library would do by default. ``sig`` is base64url without padding.

A verifier that knows the node's attested public key calls :func:`verify`; an unsigned record, a record
signed by another key, and a record changed after signing are all ``False``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's ``sig`` covers: the record without ``sig`` as canonical JSON."""
    body = {k: v for k, v in record.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def sign(record: dict[str, Any], key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """``record`` with its ``sig``."""
    signature = key.sign(canonical(record), pss(), hashes.SHA256())
    return record | {"sig": base64.urlsafe_b64encode(signature).decode().rstrip("=")}


def verify(record: dict[str, Any], public_key: rsa.RSAPublicKey) -> bool:
    """Whether ``record`` carries a valid signature by ``public_key``."""
    sig = record.get("sig")
    if not isinstance(sig, str) or not sig:
        return False
    try:
        raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
        public_key.verify(raw, canonical(record), pss(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def finite(value: Any) -> Any:
    """A metric as JSON can carry it: NaN and infinities become ``null`` (a diverging loss is NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

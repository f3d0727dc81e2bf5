"""Attestation tokens: the local issuer's RS256 signing key, and the verifier the key vault trusts.

Both halves speak the format of Microsoft Azure Attestation (``../shared/reference/azure.md`` §4.2), so the
same verifier checks a local token and a real MAA token, and a release policy written for one works for
the other:

* header ``{"alg": "RS256", "typ": "JWT", "kid": <RFC 7638 thumbprint>, "jku": "<issuer>/certs"}``;
* claims ``iss``, ``iat``, ``nbf``, ``exp``, ``jti`` (64 hex, unique) beside the attestation claims;
* the issuer's JWKS ``{"keys": [{"kty": "RSA", "kid", "alg": "RS256", "use": "sig", "n", "e"}]}``.

:class:`TokenIssuer` holds the local attestation service's RSA-3072 key. It is persisted sealed under the
:class:`~vigil.platform.local.masterkey.MasterKey` (never in clear), so the tokens it issued stay
verifiable across restarts and a copy of the data folder alone cannot mint tokens.

:class:`JwksTokenVerifier` implements :class:`~vigil.platform.attestation.TokenVerifier` over JWKS documents
pinned per issuer. Its order of checks is the one that never trusts the token before its signature is
verified with a key *we* chose: ``alg`` must be RS256 (never ``none``, never HS256 keyed with a public
key); ``iss`` must be in the allow-list; ``kid`` selects the key from *that issuer's* pinned JWKS. A
``jku`` header is never fetched: keys come only from the pinned JWKS, so a token pointing at
an attacker's key set gains nothing. PyJWT then verifies the signature and ``exp``/``nbf``/``iat`` (all
required) with a small leeway. Every failure becomes
:class:`~vigil.platform.errors.ReleaseDeniedError` with a short fixed reason, never the token itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from vigil.platform.attestation import VerifiedToken
from vigil.platform.errors import IntegrityError, ReleaseDeniedError
from vigil.platform.local.masterkey import MasterKey, write_new_file

ALGORITHM: Final = "RS256"
KEY_BITS: Final = 3072
MIN_KEY_BITS: Final = 2048
#: a token longer than this is refused before parsing (MAA tokens are a few kilobytes)
MAX_TOKEN_CHARS: Final = 64 * 1024
_SEAL_AAD: Final = b"vigil.token-issuer.private-key.v1"
_RESERVED: Final = ("iss", "iat", "nbf", "exp", "jti")


def jwk_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url): a key id that anyone holding the key can recompute."""
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")


def certs_url(issuer: str) -> str:
    """Where an issuer publishes its JWKS: ``<issuer>/certs``, as MAA does."""
    return issuer.rstrip("/") + "/certs"


class TokenIssuer:
    """Signs MAA-shaped attestation tokens with one RS256 key (see module docstring)."""

    __slots__ = ("_issuer", "_key", "_kid")

    def __init__(self, private_key: rsa.RSAPrivateKey, issuer: str) -> None:
        if private_key.key_size < MIN_KEY_BITS:
            raise ValueError(f"a token signing key needs at least {MIN_KEY_BITS} bits")
        if not issuer.startswith(("https://", "http://")):
            raise ValueError("the issuer must be an http(s) URL (it is the token's iss and the JWKS base)")
        self._key = private_key
        self._issuer = issuer.rstrip("/")
        self._kid = jwk_thumbprint(private_key.public_key())

    @classmethod
    def generate(cls, issuer: str) -> TokenIssuer:
        """A fresh RSA-3072 key held only in memory."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS), issuer)

    @classmethod
    def load_or_create(cls, path: Path, master: MasterKey, issuer: str) -> TokenIssuer:
        """The key sealed in ``path``, or a new RSA-3072 key sealed there (``O_EXCL``, mode 0600).

        IntegrityError when ``path`` was sealed under another master key or changed.
        """
        path = Path(path)
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
            der = key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            if write_new_file(path, master.seal(der, _SEAL_AAD)):
                return cls(key, issuer)
        try:
            der = master.open(path.read_bytes(), _SEAL_AAD)
        except IntegrityError as exc:
            raise IntegrityError(f"attestation signing key {path}: {exc}") from None
        loaded = serialization.load_der_private_key(der, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key")
        return cls(loaded, issuer)

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def kid(self) -> str:
        return self._kid

    def issue(self, claims: Mapping[str, Any], ttl: float, *, now: float | None = None) -> str:
        """A signed token carrying ``claims`` plus ``iss``, ``iat``, ``nbf``, ``exp`` (``now + ttl``) and a
        fresh ``jti``. ``claims`` may not set those five itself (ValueError): the issuer owns them."""
        clash = [name for name in _RESERVED if name in claims]
        if clash:
            raise ValueError(f"claims may not set {', '.join(clash)}: the issuer sets them")
        issued = int(time.time() if now is None else now)
        payload = {
            **claims,
            "iss": self._issuer,
            "iat": issued,
            "nbf": issued,
            "exp": int(issued + ttl),
            "jti": secrets.token_hex(32),
        }
        headers = {"kid": self._kid, "jku": certs_url(self._issuer), "typ": "JWT"}
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers=headers)

    def jwks(self) -> dict[str, Any]:
        """The JWKS published at ``<issuer>/certs`` (public key only)."""
        jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        key = {"kty": "RSA", "kid": self._kid, "alg": ALGORITHM, "use": "sig", "n": jwk["n"], "e": jwk["e"]}
        return {"keys": [key]}

    def __repr__(self) -> str:
        return f"TokenIssuer(issuer={self._issuer!r}, kid={self._kid!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a TokenIssuer cannot be pickled: it would write its private key out in clear")


class JwksTokenVerifier:
    """Verifies RS256 tokens from an allow-list of issuers against their pinned JWKS documents."""

    def __init__(self, trusted: Mapping[str, Mapping[str, Any]], leeway: float = 60) -> None:
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self._leeway = leeway
        self._keys: dict[str, dict[str, rsa.RSAPublicKey]] = {
            issuer.rstrip("/"): _signing_keys(issuer, jwks) for issuer, jwks in trusted.items()
        }

    @property
    def issuers(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str) -> VerifiedToken:
        """Verified claims, or ReleaseDeniedError with one of: "malformed token", "unsupported algorithm",
        "untrusted issuer", "unknown key id", "bad signature", "expired", "not yet valid" (the last two
        followed by how far off the claim is, when it is a number: ``expired (412 s past exp, leeway
        60 s; is a clock off?)``)."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise ReleaseDeniedError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise ReleaseDeniedError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise ReleaseDeniedError("unsupported algorithm")
        raw_issuer = unverified.get("iss")
        if not isinstance(raw_issuer, str):
            raise ReleaseDeniedError("malformed token")
        keys = self._keys.get(raw_issuer.rstrip("/"))
        if keys is None:
            raise ReleaseDeniedError("untrusted issuer")
        kid = header.get("kid")
        key = keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise ReleaseDeniedError("unknown key id")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=raw_issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "nbf"], "enforce_minimum_key_length": True},
            )
        except jwt.ExpiredSignatureError:
            raise ReleaseDeniedError(f"expired{self._skew(unverified, 'exp')}") from None
        except jwt.ImmatureSignatureError:
            raise ReleaseDeniedError(f"not yet valid{self._skew(unverified, 'iat', 'nbf')}") from None
        except jwt.InvalidSignatureError:
            raise ReleaseDeniedError("bad signature") from None
        except (jwt.InvalidTokenError, jwt.InvalidKeyError):
            raise ReleaseDeniedError("malformed token") from None
        return VerifiedToken(issuer=raw_issuer.rstrip("/"), claims=claims, expires=float(claims["exp"]))

    def _skew(self, claims: Mapping[str, Any], *names: str) -> str:
        """How far this clock is from the claim that failed (reliability I1: a clock-skew refusal says so,
        so the operator looks at NTP rather than at the token)."""
        now = time.time()
        for name in names:
            value = claims.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                offset = now - value if name == "exp" else value - now
                if offset > self._leeway:
                    where = "past exp" if name == "exp" else f"until {name}"
                    return f" ({offset:.0f} s {where}, leeway {self._leeway:g} s; is a clock off?)"
        return ""

    def __repr__(self) -> str:
        return f"JwksTokenVerifier(issuers={self.issuers!r}, leeway={self._leeway})"


def _jwk_public_key(entry: Mapping[str, Any]) -> object:
    """The public key of a JWK: from ``n``/``e``, or from the first ``x5c`` certificate (MAA's ``/certs``
    publishes only the certificate)."""
    if "n" not in entry and "x5c" in entry:
        return x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0])).public_key()
    return RSAAlgorithm.from_jwk(dict(entry))


def _signing_keys(issuer: str, jwks: Mapping[str, Any]) -> dict[str, rsa.RSAPublicKey]:
    """The RSA signing keys of one issuer's JWKS by ``kid``; ValueError for a JWKS we cannot pin."""
    found: dict[str, rsa.RSAPublicKey] = {}
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise ValueError(f"JWKS of {issuer}: no 'keys' array")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue  # other key types and encryption keys cannot sign RS256 tokens
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"JWKS of {issuer}: keys[{i}] has no kid")
        try:
            key = _jwk_public_key(entry)
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"JWKS of {issuer}: keys[{i}] ({kid}) is not a valid RSA key: {exc}") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"JWKS of {issuer}: keys[{i}] ({kid}) is not an RSA public key")
        if key.key_size < MIN_KEY_BITS:
            raise ValueError(f"JWKS of {issuer}: keys[{i}] ({kid}) has only {key.key_size} bits")
        found[kid] = key
    if not found:
        raise ValueError(f"JWKS of {issuer}: no RSA signing key")
    return found

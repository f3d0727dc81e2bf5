"""The attestation interface: turn an attestation token into verified claims.

The key vault's ``release`` and the platform service trust a node only through a token that an attestation
service issued (an MAA-shaped JWT, ``../shared/reference/azure.md`` §4.2–4.3): RS256, ``iss`` from an
allow-list, the signing key from that issuer's JWKS (never from the token's ``jku`` unchecked),
``exp``/``nbf`` with a small skew. The evidence side (SEV-SNP reports in, tokens out) arrives with issue 10
and implements the same protocol's ``attest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    issuer: str
    claims: dict[str, Any]
    expires: float


class TokenVerifier(Protocol):
    def verify(self, token: str) -> VerifiedToken:
        """Verified claims, or :class:`~vigil.platform.errors.ReleaseDeniedError` naming the failed check."""
        ...

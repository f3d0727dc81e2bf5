"""Microsoft Azure Attestation tokens as a platform :class:`~vigil.platform.attestation.TokenVerifier`.

The checks are not here: :func:`vigil.training_node.claims.verify_maa_token` already implements the
``../shared/reference/azure.md`` §4.2 checklist (RS256 only, ``iss`` in the allow-list, ``jku`` only when it
is ``<issuer>/certs``, the key from *our* copy of that issuer's JWKS, ``exp``/``iat``/``nbf`` required,
``x-ms-ver``, the SEV-SNP claims at the top level of a ``sevsnpvm`` token or under ``x-ms-isolation-tee``
of an ``azurevm`` one, and the :class:`~vigil.training_node.claims.AttestationPolicy`). What this module
adds is what a long-running daemon needs around it:

* **Where the keys come from.** Each allowed issuer's JWKS is fetched from ``<issuer>/certs`` (never from a
  URL the token names), over https only, validated when fetched (a document with no usable RSA signing
  key is refused and the previous copy kept), and cached.
* **Key rollover.** MAA rotates its signing keys. A token whose ``kid`` is not in the cached set, or whose
  issuer has no cached set yet, makes the verifier fetch that issuer's JWKS again and retry once. Fetches
  per issuer are at least ``min_refresh`` seconds apart, so tokens with made-up key ids cannot turn the
  verifier into a load generator against MAA; inside that window the token is refused.
* **Keys expire** (reliability E6). A cached JWKS is used for ``max_age`` seconds after it was fetched
  (24 h by default); past that it no longer verifies anything until a fetch succeeds. So an endpoint that is
  down or serves garbage keeps the last good keys working for a day, then fails closed instead of trusting
  keys that MAA may have retired; the fetch it then needs is rate-limited by ``min_refresh`` like any other.
* **The protocol's error.** ``verify_maa_token`` raises AttestationError; a TokenVerifier raises
  :class:`~vigil.platform.errors.ReleaseDeniedError`, with the same fixed reason (never the token).

``verify`` is synchronous, as the protocol is; a fetch inside it blocks for at most ``timeout`` seconds
and happens only on a cache miss. Call :meth:`MaaTokenVerifier.warm` at start-up (it fetches in a worker
thread) so that the event loop does not pay for the first fetch.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import httpx
import jwt

from vigil.platform.attestation import VerifiedToken
from vigil.platform.errors import AttestationError, ReleaseDeniedError
from vigil.platform.local.tokens import MAX_TOKEN_CHARS, JwksTokenVerifier, certs_url
from vigil.training_node.claims import AttestationPolicy, verify_maa_token

log = logging.getLogger(__name__)

#: reasons after which a fresh JWKS might help (the issuer is allowed: it was checked first)
_REFETCH_REASONS: Final = frozenset({"no JWKS for the issuer", "unknown key id"})
MAX_JWKS_BYTES: Final = 256 * 1024


class MaaTokenVerifier:
    """Verifies MAA tokens from allowed issuers against their published JWKS (module docstring)."""

    def __init__(
        self,
        issuers: Iterable[str],
        policy: AttestationPolicy,
        *,
        leeway: float = 60.0,
        min_refresh: float = 300.0,
        max_age: float = 86400.0,
        timeout: float = 5.0,
        verify_tls: str | bool = True,  # a CA bundle path for a private CA (tests)
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers = tuple(dict.fromkeys(i.rstrip("/") for i in issuers))
        if not self._issuers:
            raise ValueError("name at least one MAA issuer (https://<provider>.<region>.attest.azure.net)")
        for issuer in self._issuers:
            if not issuer.startswith("https://"):
                raise ValueError(f"MAA issuer {issuer!r} is not an https URL")
        if leeway < 0 or min_refresh < 0 or timeout <= 0 or max_age <= 0:
            raise ValueError("leeway and min_refresh must not be negative, timeout and max_age positive")
        self._policy = policy
        self._leeway = leeway
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._timeout = timeout
        self._verify_tls: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=verify_tls) if isinstance(verify_tls, str) else verify_tls
        )
        self._clock = clock
        self._jwks: dict[str, Mapping[str, Any]] = {}
        #: when each issuer's JWKS was last fetched (attempted) and last fetched successfully
        self._fetched: dict[str, float] = {}
        self._valid_from: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def issuers(self) -> tuple[str, ...]:
        return self._issuers

    def __repr__(self) -> str:
        return f"MaaTokenVerifier(issuers={list(self._issuers)!r}, cached={sorted(self._jwks)!r})"

    def verify(self, token: str) -> VerifiedToken:
        """Verified claims of an MAA token that satisfies the policy; ReleaseDeniedError otherwise."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise ReleaseDeniedError("malformed token")
        try:
            return self._verify(token)
        except AttestationError as exc:
            if exc.reason not in _REFETCH_REASONS:
                raise ReleaseDeniedError(exc.reason) from None
            reason = exc.reason
        issuer = _unverified_issuer(token)
        if issuer is None or not self.refresh(issuer):
            raise ReleaseDeniedError(reason)
        try:
            return self._verify(token)
        except AttestationError as exc:
            raise ReleaseDeniedError(exc.reason) from None

    def refresh(self, issuer: str) -> bool:
        """Fetch ``issuer``'s JWKS now unless it was fetched less than ``min_refresh`` seconds ago; True
        when a new, valid document replaced the cached one."""
        issuer = issuer.rstrip("/")
        if issuer not in self._issuers:
            return False
        with self._lock:
            last = self._fetched.get(issuer)
            now = self._clock()
            if last is not None and now - last < self._min_refresh:
                return False
            self._fetched[issuer] = now
        try:
            document = self._fetch(issuer)
            JwksTokenVerifier({issuer: document})  # refuses a JWKS with no usable signing key
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("JWKS of %s not refreshed: %s", issuer, exc)
            return False
        with self._lock:
            self._jwks[issuer] = document
            self._valid_from[issuer] = now
        log.info("JWKS of %s refreshed (%d keys)", issuer, len(document.get("keys", [])))
        return True

    async def warm(self) -> None:
        """Fetch every issuer's JWKS in a worker thread (at start-up, off the event loop)."""
        for issuer in self._issuers:
            await asyncio.to_thread(self.refresh, issuer)

    def _verify(self, token: str) -> VerifiedToken:
        now = self._clock()
        with self._lock:  # (a JWKS past max_age is as good as none: the token's verify asks for a fetch)
            jwks = {i: d for i, d in self._jwks.items() if now - self._valid_from[i] < self._max_age}
        return verify_maa_token(
            token, issuers=self._issuers, jwks=jwks, policy=self._policy, leeway=self._leeway
        )

    def _fetch(self, issuer: str) -> dict[str, Any]:
        with httpx.Client(timeout=self._timeout, verify=self._verify_tls, follow_redirects=False) as client:
            response = client.get(certs_url(issuer), headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError("JWKS document is not a JSON object")
        return document


def _unverified_issuer(token: str) -> str | None:
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except (jwt.InvalidTokenError, TypeError):
        return None
    return issuer.rstrip("/") if isinstance(issuer, str) else None

"""Microsoft Entra ID bearer tokens on the ingestion endpoints (Event Grid's and Azure Monitor's "secure
webhook"), checked here with the tenant's published signing keys.

Azure recommends these over secrets in URLs: Event Grid (and an action group's secure webhook) obtains a
token from Entra ID for the app registration that stands for Vigil and sends ``Authorization: Bearer
<JWT>``. A source with ``entra_tenant`` set accepts such a token when every check below holds; any failure
rejects the call with a reason for the counter's label, never with the token or which check came close:

* the token is at most :data:`MAX_TOKEN_CHARS` long, three base64url parts, a JSON header and payload;
* the header's ``alg`` is exactly ``RS256`` (so no ``none``, and no HMAC "signed" with the public key),
  ``kid`` names a key: header fields that point at keys elsewhere (``jku``, ``x5u``, ``jwk``, ``x5c``)
  are never followed, the keys come only from ``entra_jwks_url``;
* the key is an RSA key of the tenant's JWKS whose own ``alg``, if it says one, is ``RS256``, and the
  signature verifies (PKCS#1 v1.5, SHA-256, with ``cryptography``);
* ``exp`` is present and not past, ``nbf`` (if present) is not ahead, each within ``entra_leeway``
  seconds; ``iss`` is the tenant's v1 or v2 issuer and ``tid`` (if present) the tenant; ``aud`` is one
  of ``entra_audiences``; ``roles`` holds one of ``entra_roles`` (the app role assigned to the Event Grid
  or Azure Monitor service principal: without it any client in the tenant could get a token for the app).

Keys are fetched when first needed, every :data:`REFRESH_AFTER` seconds (Entra publishes a new key well
before it signs with it), and when a token names a ``kid`` not yet known, at most once per
:data:`REFETCH_AFTER` seconds, so tokens with made-up ``kid`` values cannot make the daemon hammer the keys
endpoint; RSA keys under :data:`MIN_KEY_BITS` bits are never used. A call whose token cannot be checked
now (no keys could be fetched: ``keys_unavailable``; a ``kid`` that must wait for the next fetch:
``key_not_fetched``) is refused with 503 and ``Retry-After``, which Azure's senders retry: closed, not
open, and not lost.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from vigil.platform.local.tokens import MIN_KEY_BITS
from vigil.settings import SourceAuth

log = logging.getLogger(__name__)

#: longest token looked at (Entra access tokens are 1-3 KB)
MAX_TOKEN_CHARS: Final = 16 * 1024
#: least seconds between two fetches of one keys endpoint for a ``kid`` not known
REFETCH_AFTER: Final = 60.0
#: seconds after which the keys are fetched again anyway (Entra publishes a new key well before it signs
#: with it, so a rotation is usually known before the first token that uses it)
REFRESH_AFTER: Final = 3600.0
#: least seconds between two fetches after one failed (no key known: every call is refused meanwhile)
RETRY_FAILED: Final = 10.0
#: seconds a fetch of the keys may take
FETCH_TIMEOUT: Final = 5.0


def jwks_url(auth: SourceAuth) -> str:
    """The keys endpoint of the source's tenant (``entra_jwks_url`` when set)."""
    return auth.entra_jwks_url or f"https://login.microsoftonline.com/{auth.entra_tenant}/discovery/v2.0/keys"


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class KeysStaleError(Exception):
    """The token names a key the set lacks and the set was fetched too recently to fetch it again."""


@dataclass
class KeySet:
    """The RSA signing keys of one JWKS endpoint, by ``kid``."""

    url: str
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    #: monotonic time of the last fetch tried (None: never), and whether it failed
    fetched_at: float | None = None
    failed: bool = False
    #: one fetch at a time, per event loop (a lock is bound to the loop it first waits in)
    _locks: dict[int, asyncio.Lock] = field(default_factory=dict)

    async def key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The key named ``kid``. The set is fetched when first needed, when older than
        :data:`REFRESH_AFTER`, and for a ``kid`` it lacks once the last fetch is :data:`REFETCH_AFTER` old
        (:data:`RETRY_FAILED` after a failed one). None: the set was just fetched and lacks the key.
        Raises OSError while no key can be had at all, KeysStaleError when a fetch for the key must wait."""
        now = time.monotonic()
        age = None if self.fetched_at is None else now - self.fetched_at
        found = self.keys.get(kid)
        if found is not None and (age is None or age < REFRESH_AFTER or self.failed):
            return found
        async with self._lock():  # (one fetch for the calls that wait on the same unknown key)
            age = None if self.fetched_at is None else time.monotonic() - self.fetched_at
            wait = RETRY_FAILED if self.failed else REFETCH_AFTER
            # a known key is looked up again only when the set is old (the key may have been withdrawn)
            due = age is None or age >= (wait if kid not in self.keys else REFRESH_AFTER)
            fetched = False
            if due:
                await self._fetch()
                fetched = True
        if self.failed and not self.keys:
            raise OSError("the signing keys cannot be fetched")
        found = self.keys.get(kid)
        if found is None and not fetched:
            raise KeysStaleError(kid)
        return found

    def _lock(self) -> asyncio.Lock:
        loop = id(asyncio.get_running_loop())
        lock = self._locks.get(loop)
        if lock is None:
            self._locks.clear()  # (locks of loops that are gone)
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def _fetch(self) -> None:
        self.fetched_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
                answer = await client.get(self.url)
                answer.raise_for_status()
                doc = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot fetch the Entra signing keys from %s: %s", self.url, exc)
            self.failed = True
            return
        self.failed = False
        self.keys = _rsa_keys(doc)


def _rsa_keys(doc: Any) -> dict[str, rsa.RSAPublicKey]:
    out: dict[str, rsa.RSAPublicKey] = {}
    entries = doc.get("keys") if isinstance(doc, dict) else None
    for jwk in entries if isinstance(entries, list) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("alg", "RS256") != "RS256" or not isinstance(jwk.get("kid"), str):
            continue  # a key meant for another algorithm is never used for this one
        try:
            n = int.from_bytes(_b64(jwk["n"]), "big")
            e = int.from_bytes(_b64(jwk["e"]), "big")
            if n.bit_length() < MIN_KEY_BITS:
                continue  # (a short key could be factored: never trusted, whoever published it)
            out[jwk["kid"]] = rsa.RSAPublicNumbers(e, n).public_key()
        except (KeyError, TypeError, ValueError, binascii.Error):
            continue
    return out


#: key sets by endpoint, shared by the sources that use the same tenant
_KEYSETS: dict[str, KeySet] = {}


def keyset(url: str) -> KeySet:
    found = _KEYSETS.get(url)
    if found is None:
        found = _KEYSETS[url] = KeySet(url)
    return found


async def verify(auth: SourceAuth, token: str, now: float | None = None) -> str:
    """Check an Entra token for the source: "" when it may post, else the reason (a counter label).
    ``keys_unavailable`` and ``key_not_fetched`` mean the token could not be checked now (answer 503:
    senders retry those, where a 401 is not retried or only much later)."""
    parsed = _parse(token)
    if parsed is None:
        return "bad_token"
    header, claims, signed, sig = parsed
    try:
        key = await keyset(jwks_url(auth)).key(header["kid"])
    except OSError:
        return "keys_unavailable"
    except KeysStaleError:
        return "key_not_fetched"
    if key is None:
        return "unknown_key"
    try:
        key.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return "bad_signature"
    return _claims(auth, claims, time.time() if now is None else now)


#: reasons that say the token could not be checked now, not that it is bad
RETRY_REASONS: Final = frozenset({"keys_unavailable", "key_not_fetched"})


def _parse(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes] | None:
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        return None
    head, body, sig = token.split(".")
    try:
        header = json.loads(_b64(head))
        claims = json.loads(_b64(body))
        signature = _b64(sig)
    except (ValueError, binascii.Error, RecursionError):  # (nesting deep enough to exhaust the parser)
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    if header.get("alg") != "RS256" or not isinstance(header.get("kid"), str) or not signature:
        return None
    return header, claims, f"{head}.{body}".encode("ascii"), signature


def _claims(auth: SourceAuth, claims: dict[str, Any], now: float) -> str:
    leeway = auth.entra_leeway
    exp, nbf = _seconds(claims.get("exp")), claims.get("nbf")
    if exp is None:
        return "bad_token"
    if now > exp + leeway:
        return "expired"
    if nbf is not None and ((when := _seconds(nbf)) is None or now + leeway < when):
        return "not_yet_valid"
    tenant = auth.entra_tenant
    issuers = {f"https://sts.windows.net/{tenant}/", f"https://login.microsoftonline.com/{tenant}/v2.0"}
    if claims.get("iss") not in issuers or claims.get("tid", tenant) != tenant:
        return "wrong_issuer"
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and a in auth.entra_audiences for a in audiences):
        return "wrong_audience"
    roles = claims.get("roles")
    if not isinstance(roles, list) or not any(r in auth.entra_roles for r in roles if isinstance(r, str)):
        return "missing_role"
    return ""


def _seconds(value: Any) -> float | None:
    """A NumericDate claim as a finite number of seconds, else None (bools, strings, NaN, 1e400 ...)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None

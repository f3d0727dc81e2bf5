"""Authentication of the ingestion endpoints: bearer tokens, HMAC signatures, Event Grid URL secrets, Entra.

Every ingestion endpoint is closed unless a caller proves it may post (an open endpoint would let anyone
write "evidence" into the event log). Four ways, per source (``http.sources.<name>`` in the settings):

* ``Authorization: Bearer <token>``, compared in constant time with each configured token;
* ``X-Vigil-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is HMAC-SHA256 of ``"<t>.<body>"`` under a
  configured secret and ``t`` is within ``http.max_skew`` seconds of now (a captured request cannot be
  replayed later); several ``v1=`` values are allowed, so senders can rotate secrets;
* ``?code=<secret>`` in the URL, which is how Event Grid authenticates a plain webhook (it keeps query
  parameters encrypted and never shows them back); give two values while rotating.
* an Entra ID token (Event Grid's and Azure Monitor's secure webhooks), when the source names a tenant:
  a bearer token that is not one of the configured ones is checked by :mod:`vigil.api.entra`.

A source with nothing configured accepts the *local token* that ``vigil run`` writes to
``{data_dir}/ingest.token`` (0600) at first start. Secrets are never logged or echoed; a rejection says
why only in the counter's ``reason`` label (``no_credentials``, ``bad_token``, ``bad_signature``,
``stale_signature``, ``bad_code``), never which secret came close.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from vigil.fsutil import atomic_write
from vigil.settings import SourceAuth

SIGNATURE_HEADER: Final = "x-vigil-signature"
TOKEN_FILE: Final = "ingest.token"


def local_token(data_dir: Path) -> str:
    """The local ingestion token: read from ``{data_dir}/ingest.token``, created (0600) if missing or empty.

    Written atomically (a temporary file, created 0600, fsynced, renamed): a crash while creating it can
    leave no token file, never an empty one that would lock every sender out.
    """
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode("ascii"))  # mkstemp creates the file 0600
    return token


def _equal_any(given: str, accepted: list[str]) -> bool:
    given_b = given.encode()
    ok = False
    for candidate in accepted:  # no early exit: the time taken does not depend on which one matched
        ok |= hmac.compare_digest(given_b, candidate.encode())
    return ok


def bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None (another scheme, or none)."""
    scheme, _, value = header.partition(" ")
    token = value.strip()
    return token if scheme.lower() == "bearer" and token else None


def pre_body(
    auth: SourceAuth, headers: Mapping[str, str], query: Mapping[str, str], local: str | None
) -> str | None:
    """Checks that need no body. Returns "" when authenticated, a reason when rejected, or None when the
    decision needs the body (an HMAC signature is present)."""
    tokens = list(auth.tokens) or ([local] if local and not auth.configured else [])
    header = headers.get("authorization", "")
    if header:
        token = bearer(header)
        return "" if token is not None and _equal_any(token, tokens) else "bad_token"
    code = query.get("code")
    if code is not None:
        return "" if _equal_any(code, list(auth.query_secrets)) else "bad_code"
    if headers.get(SIGNATURE_HEADER):
        return None
    return "no_credentials"


def signature(auth: SourceAuth, header: str, body: bytes, now: float, max_skew: int) -> str:
    """Verify ``X-Vigil-Signature`` over ``body``: "" when valid, else the reason."""
    parts = [p.strip().partition("=") for p in header.split(",")]
    stamp = next((v for k, _, v in parts if k == "t"), "")
    sent = [v for k, _, v in parts if k == "v1" and v]
    if not stamp.isdigit() or not sent:
        return "bad_signature"
    if abs(now - int(stamp)) > max_skew:
        return "stale_signature"
    signed = stamp.encode() + b"." + body
    expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in auth.hmac_secrets]
    ok = False
    for value in sent:
        ok |= _equal_any(value.lower(), expected)
    return "" if ok else "bad_signature"


def sign(secret: str, body: bytes, now: int) -> str:
    """The header value a sender puts in ``X-Vigil-Signature`` (for clients and tests)."""
    digest = hmac.new(secret.encode(), str(now).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={now},v1={digest}"

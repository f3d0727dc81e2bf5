"""Optional authentication of the read API (``http.read_auth``).

The read endpoints (findings, incidents, dead letters, rules, status, metrics, actions, alerts, the OpenAPI
document) answer anyone who reaches the listener by default, which is right on loopback, the embedded
default. A deployment whose listener others can reach (a private address for Event Grid or Azure Monitor
pushes) sets ``http.read_auth: true``: those endpoints then want ``Authorization: Bearer <token>`` with the
local token (``{data_dir}/ingest.token``, the one the CLI on the same machine reads) or a platform API
token (``vigil platform principals add NAME``), and answer 401 otherwise. Findings and incidents name
principals, addresses and resources: what an attacker would like to know about the defence.

``/healthz`` and ``/readyz`` stay open (load balancers and orchestrators probe them without secrets; they
say nothing but "ok" and a reason). Ingestion, approvals and the platform's own endpoints keep their own
authentication, unchanged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from vigil.api.auth import bearer
from vigil.platform.principals import TokenFileError
from vigil.streams import RunState

log = logging.getLogger(__name__)

#: path prefixes of the read API (``/v1/actions`` covers its GETs; its POSTs authenticate themselves)
READ_PREFIXES: Final = (
    "/v1/findings",
    "/v1/incidents",
    "/v1/dead-letters",
    "/v1/rules",
    "/v1/status",
    "/v1/actions",
    "/v1/response",
    "/v1/alerts",
    "/metrics",
    "/openapi.json",
)


def is_read(method: str, path: str) -> bool:
    """Whether ``method path`` is a read of the read API (the endpoints ``read_auth`` closes)."""
    return method in ("GET", "HEAD") and any(path == p or path.startswith(p + "/") for p in READ_PREFIXES)


def allowed(state: RunState, header: str) -> bool:
    """Whether an ``Authorization`` header carries the local token or a platform API token."""
    token = bearer(header)
    if token is None:
        return False
    local = state.local_token
    if local and hmac.compare_digest(token.encode(), local.encode()):
        return True
    return state.platform is not None and state.platform.platform.tokens.lookup(token) is not None


def install(app: FastAPI, state: RunState) -> None:
    """Close the read API to callers without a token (only when ``http.read_auth`` is set: the middleware
    costs every request a little)."""

    @app.middleware("http")
    async def read_auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not is_read(request.method, request.url.path):
            return await call_next(request)
        try:
            ok = allowed(state, request.headers.get("authorization", ""))
        except TokenFileError as exc:  # says which file, never its content
            log.error("read API: %s", exc)
            return JSONResponse({"error": "the platform's token file cannot be read"}, status_code=503)
        if not ok:
            return JSONResponse(
                {"error": "a bearer token is required (the local token in the data folder, or a platform "
                 "API token): http.read_auth is on"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="vigil"'},
            )  # fmt: skip
        return await call_next(request)

"""The HTTP ingestion endpoints: events in over loopback or the network, durable before the answer.

- ``POST /v1/events``: a JSON object, an array, JSON Lines or an Event Hubs ``{"records": [...]}``
  envelope, in any format ``vigil normalize`` knows (detected per record).
- ``POST /v1/webhooks/eventgrid``: Event Grid or CloudEvents deliveries; the subscription validation event
  is answered ``200 {"validationResponse": code}`` (when ``aeg-subscription-name`` is allowed), and
  ``OPTIONS`` answers the CloudEvents abuse-protection probe with ``WebHook-Allowed-Origin``.
- ``POST /v1/webhooks/azure-monitor``: the common alert schema.
- ``POST /v1/webhooks/sentinel``: Sentinel alerts and incidents as a Logic App / automation rule posts them.

Order of checks, cheapest first, so a flood costs little: a ``Content-Length`` over ``http.max_body_bytes``
is ``413``; a detect backlog over ``http.max_backlog`` is ``429`` with ``Retry-After`` (before the body is
read); bearer tokens (configured ones, or Entra ID tokens: :mod:`vigil.api.entra`) and URL codes are
checked (``401``); bodies held by calls in progress over
``http.max_buffered_bytes`` are ``429`` too; the body is read with the same cap (``413``);
an HMAC signature is checked over it (``401``). Then the body is normalised and its events and dead letters
are committed to the store in one transaction (:meth:`~vigil.store.sqlite.Store.accept`; the log keeps the
body's bytes, :mod:`vigil.store.eventlog`) before the answer:
``200 {"accepted": N, "dead_lettered": M}``. A body with no event at all (not JSON, every record bad) is
``400`` with the reasons, and its dead letters are stored too. Normalising and committing run in a worker
thread, so the event loop keeps serving.

The daemon serves these ``POST`` endpoints through :func:`direct`, in front of the FastAPI app: the same
handlers, called without FastAPI's and Starlette's middleware and routing layers, which cost about 5 % of
the daemon's interpreter time at 20,000 events/s (a dozen calls per request, no single hot spot). The routes
stay on the app for everything else that reads them (OpenAPI, a path FastAPI would redirect).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from vigil.api import entra
from vigil.api.auth import SIGNATURE_HEADER, bearer, pre_body, signature
from vigil.events.batch import BatchNormalizer, Result
from vigil.settings import SourceAuth
from vigil.store.sqlite import RawBody, StoreError
from vigil.streams import RunState
from vigil.streams.crash import crash_point

#: endpoint -> (source name in settings and metrics, normalizer format)
ENDPOINTS: Final = {
    "/v1/events": ("events", "auto"),
    "/v1/webhooks/eventgrid": ("eventgrid", "auto"),
    "/v1/webhooks/azure-monitor": ("azure_monitor", "monitor-alert"),
    "/v1/webhooks/sentinel": ("sentinel", "auto"),
}
EVENTGRID_ORIGIN: Final = "eventgrid.azure.net"
_MAX_REASONS: Final = 10

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class _BodyTooLargeError(Exception):
    """The body grew past the cap while it was read."""


def create_router(state: RunState) -> APIRouter:
    """The ingestion routes over ``state`` (its store, wake-up and backlog hooks)."""
    router = APIRouter()
    for path, handler in handlers(state).items():
        router.add_api_route(path, handler, methods=["POST"], include_in_schema=True)
    router.add_api_route("/v1/webhooks/eventgrid", _options, methods=["OPTIONS"])
    router.add_api_route("/v1/rules/reload", _reload_handler(state), methods=["POST"])
    return router


def handlers(state: RunState) -> dict[str, Handler]:
    """The ``POST`` handler of each ingestion endpoint, by path."""
    return {path: _handler(state, source, fmt) for path, (source, fmt) in ENDPOINTS.items()}


def direct(app: ASGIApp, state: RunState) -> ASGIApp:
    """``app`` with the ingestion ``POST`` endpoints answered directly by their handlers (see the module
    docstring); every other request, and any other path spelling, goes to ``app``. A client that goes away
    mid-body is logged as the app's handler logs it, with no answer (nobody is left to read one)."""
    direct_handlers = handlers(state)

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        handler = direct_handlers.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        try:
            response = await handler(Request(scope, receive))
        except ClientDisconnect:
            log.info("POST %s: the client disconnected before its request was read", scope["path"])
            return
        await response(scope, receive, send)

    return serve


def operator_auth(state: RunState, request: Request, action: str) -> Response | None:
    """None when a state-changing call (a reload, an incident change) is authenticated like
    ``POST /v1/events`` (bearer token or the local token; no body signature), else the counted 401."""
    verdict = pre_body(
        state.settings.http.sources.events, request.headers, request.query_params, state.local_token
    )
    if verdict is None or verdict:
        return _reject(state, action, verdict or "bad_signature")
    return None


def _reload_handler(state: RunState) -> Any:
    async def reload_rules(request: Request) -> Response:
        """Reload the rule set now (authenticated like ``POST /v1/events``): 200 with the result when the
        new set runs, 422 with its diagnostics when it was rejected (the running set stays)."""
        refused = operator_auth(state, request, "rules_reload")
        if refused is not None:
            return refused
        if state.reloader is None:
            return _error(503, "hot reload is not running")
        result = await state.reloader.reload()
        return JSONResponse(result.to_dict(), status_code=200 if result.ok else 422)

    return reload_rules


async def _options(request: Request) -> Response:
    """The CloudEvents webhook abuse-protection handshake (Event Grid's CloudEvents validation)."""
    origin = request.headers.get("webhook-request-origin", "")
    headers = {"Allow": "POST, OPTIONS"}
    if origin:
        headers["WebHook-Allowed-Origin"] = origin if origin.lower() == EVENTGRID_ORIGIN else EVENTGRID_ORIGIN
        headers["WebHook-Allowed-Rate"] = "*"
    return Response(status_code=200, headers=headers)


def _handler(state: RunState, source: str, fmt: str) -> Handler:
    stats = state.http_ingest

    async def ingest(request: Request) -> Response:
        settings = state.settings
        auth: SourceAuth = getattr(settings.http.sources, source)
        limit = int(settings.http.max_body_bytes)
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isascii() and length.isdigit() else None
        if declared is not None and declared > limit:
            stats.bump(stats.too_large, source)
            return _error(413, f"body of {length} bytes is over the {limit}-byte limit (http.max_body_bytes)")
        if state.store is None:
            return _error(503, "the store is not open")
        backlog = state.backlog() if state.backlog is not None else 0  # (from memory: no store query)
        if backlog > settings.http.max_backlog:
            stats.bump(stats.throttled, source)
            return _error(429, f"{backlog} events wait for detection; retry shortly", {"Retry-After": "1"})
        verdict = pre_body(auth, request.headers, request.query_params, state.local_token)
        if verdict == "bad_token" and auth.entra_tenant:  # not a configured token: an Entra token, maybe
            token = bearer(request.headers.get("authorization", ""))
            verdict = await entra.verify(auth, token) if token is not None else verdict
        if verdict:
            return _reject(state, source, verdict)
        # bodies held at once are bounded too (a flood of large bodies, or of bodies from callers whose
        # HMAC signature can only be checked once read); one call always goes through
        need = declared if declared is not None else limit
        if stats.buffered and stats.buffered + need > settings.http.max_buffered_bytes:
            stats.bump(stats.throttled, source)
            return _error(429, "too many request bodies in progress; retry shortly", {"Retry-After": "1"})
        stats.buffered += need
        try:
            return await accept(request, auth, verdict, limit, need)
        finally:
            stats.buffered -= need

    async def accept(
        request: Request, auth: SourceAuth, verdict: str | None, limit: int, need: int
    ) -> Response:
        """Read (no more than was declared and reserved), check, normalise and store the body of a call that
        passed the checks before it."""
        settings = state.settings
        try:
            body = await _read(request, need)
        except _BodyTooLargeError:
            stats.bump(stats.too_large, source)
            if need < limit:  # (a Content-Length was given, and the body ran past it)
                return _error(400, f"body longer than its Content-Length of {need} bytes")
            return _error(413, f"body over the {limit}-byte limit (http.max_body_bytes)")
        if verdict is None:
            verdict = signature(
                auth, request.headers[SIGNATURE_HEADER], body, time.time(), settings.http.max_skew
            )
            if verdict:
                return _reject(state, source, verdict)
        max_record = settings.ingest.max_record_bytes
        result = await asyncio.to_thread(_normalise, body, fmt, max_record, limit)
        # kept as the bytes received (not re-encoded) unless a step below changes an event
        raw: RawBody | None = RawBody(body, fmt, max_record, limit)
        if state.telemetry_check is not None and result.events:
            normalised = result.events
            result.events = state.telemetry_check(normalised)
            if any(a is not b for a, b in zip(normalised, result.events, strict=True)):
                raw = None
        validation = _validation(result, source, request, auth)
        if validation is not None and not result.events:
            stats.bump(stats.controls, source, len(result.controls))
            return validation
        store = state.store
        assert store is not None  # (checked before the call was let in)
        crash_point("http.before_accept")
        try:
            seqs = await asyncio.to_thread(
                store.accept, result.events, result.dead, f"http:{source}", raw=raw
            )
        except StoreError as exc:  # disk full, locked, I/O error: nothing was stored, the sender retries
            stats.bump(stats.store_errors, source)
            return _error(503, f"cannot store the events now: {exc}", {"Retry-After": "5"})
        crash_point("http.after_accept")  # committed, not yet answered: the client will retry
        if result.events and state.offer is not None:
            state.offer(seqs, result.events)
        duplicates = seqs.count(0)
        stats.bump(stats.accepted, source, len(result.events) - duplicates)
        stats.bump(stats.dead_letters, source, len(result.dead))
        stats.bump(stats.controls, source, len(result.controls))
        if result.events and state.wake is not None:
            state.wake()
        if not result.events and not result.controls:
            reasons = [dl.reason for dl in result.dead[:_MAX_REASONS]]
            return JSONResponse({"error": "no event in the body", "dead_letters": reasons}, status_code=400)
        answer: dict[str, Any] = {"accepted": len(result.events), "dead_lettered": len(result.dead)}
        if duplicates:
            answer["duplicates"] = duplicates  # already in the log (a retry): accepted, not stored twice
        if result.dead:
            answer["dead_letters"] = [dl.reason for dl in result.dead[:_MAX_REASONS]]
        return JSONResponse(answer, status_code=200)

    ingest.__name__ = f"ingest_{source}"
    return ingest


async def _read(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


def _normalise(body: bytes, fmt: str, max_record: int, max_document: int) -> Result:
    normalizer = BatchNormalizer(fmt, max_record_bytes=max_record, max_document_bytes=max_document)
    return normalizer.body(body, "http")


def _validation(result: Result, source: str, request: Request, auth: SourceAuth) -> Response | None:
    """The answer to an Event Grid subscription validation event, if the body is one."""
    if source != "eventgrid":
        return None
    for control in result.controls:
        if control.kind != "eventgrid.validation":
            continue
        name = request.headers.get("aeg-subscription-name", "")
        allowed = [s.upper() for s in getattr(auth, "subscriptions", ())]
        if allowed and name.upper() not in allowed:
            return _error(
                403, f"subscription {name or '(none)'} is not in http.sources.eventgrid.subscriptions"
            )
        return JSONResponse({"validationResponse": control.details.get("validation_code")}, status_code=200)
    return (
        JSONResponse({"accepted": 0, "controls": len(result.controls)}, status_code=200)
        if result.controls
        else None
    )


def _reject(state: RunState, source: str, reason: str) -> Response:
    state.http_ingest.bump(state.http_ingest.rejected, (source, reason))
    if reason in entra.RETRY_REASONS:  # could not be checked now: refused, and retried by the sender
        return _error(503, "cannot check the token now; retry shortly", {"Retry-After": "30"})
    return _error(401, "not authenticated", {"WWW-Authenticate": 'Bearer realm="vigil"'})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)

"""Incident endpoints: list, read with timeline, acknowledge, resolve (vigil/store/incidents.py).

- ``GET /v1/incidents?state=&limit=``: the most recently active first.
- ``GET /v1/incidents/{id}``: one incident with its timeline and the actions its findings led to (newest
  first); 404 when unknown.
- ``POST /v1/incidents/{id}/acknowledge`` and ``.../resolve``: a state change, authenticated like
  ``POST /v1/events`` (bearer token, signature or the local token), with an optional ``{"note": "..."}``;
  ``409`` when the change is not allowed (a resolved incident cannot be acknowledged). The change is
  written to the audit log first (kind ``incident_change``); when it cannot be, ``503`` and no change.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from vigil.api.ingest import operator_auth
from vigil.api.read import DEFAULT_LIMIT, MAX_LIMIT, error, read_failed, state_of, store_or_error
from vigil.audit.log import AuditUnavailableError
from vigil.audit.record import Actor, AuditKind
from vigil.store.incidents import IncidentError
from vigil.store.sqlite import StoreError

router = APIRouter()
log = logging.getLogger(__name__)

#: largest body of a state change (a note)
NOTE_LIMIT = 64 * 1024


@router.get("/v1/incidents", response_model=None)
async def list_incidents(
    request: Request,
    state: Literal["open", "acknowledged", "resolved"] | None = None,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
) -> dict[str, Any] | JSONResponse:
    store = store_or_error(request)
    if isinstance(store, JSONResponse):
        return store
    try:
        found = await asyncio.to_thread(store.incidents, state=state, limit=limit)
    except (StoreError, sqlite3.Error) as exc:
        return read_failed(exc)
    return {"incidents": found, "count": len(found)}


@router.get("/v1/incidents/{incident_id}", response_model=None)
async def get_incident(request: Request, incident_id: str) -> dict[str, Any] | JSONResponse:
    store = store_or_error(request)
    if isinstance(store, JSONResponse):
        return store
    try:
        found = await asyncio.to_thread(store.incident, incident_id)
    except (StoreError, sqlite3.Error) as exc:
        return read_failed(exc)
    if found is None:
        return error(404, f"no incident {incident_id!r}")
    engine = state_of(request).response
    if engine is not None:  # the remediations its findings asked for, with their states
        found["actions"] = [a.to_json() for a in engine.list(incident_id=incident_id, limit=MAX_LIMIT)]
    return found


async def _change(request: Request, incident_id: str, to: Literal["acknowledged", "resolved"]) -> Response:
    state = state_of(request)
    refused = operator_auth(state, request, "incidents")
    if refused is not None:
        return refused
    store = store_or_error(request)
    if isinstance(store, JSONResponse):
        return store
    body = b""
    async for chunk in request.stream():  # a note, not a payload: capped at 64 KiB
        body += chunk
        if len(body) > NOTE_LIMIT:
            return error(413, f"body over {NOTE_LIMIT} bytes")
    try:
        note = orjson.loads(body).get("note", "") if body else ""
    except (orjson.JSONDecodeError, AttributeError):
        return error(400, 'body: expected {"note": "..."} or nothing')
    try:
        if await asyncio.to_thread(store.incident, incident_id) is None:
            return error(404, f"no incident {incident_id!r}")
    except (StoreError, sqlite3.Error) as exc:
        return read_failed(exc)
    if state.platform is not None:  # on record first: a change that cannot be audited does not happen
        try:
            details = {"to": to, "note": str(note)[:1024]}
            await state.platform.audit.append(
                Actor.user("api"), AuditKind.INCIDENT_CHANGE, incident_id, details
            )
        except (AuditUnavailableError, ValueError) as exc:
            return error(503, f"incident not changed: it cannot be audited: {exc}")
    try:
        result = await asyncio.to_thread(store.set_incident_state, incident_id, to, "api", str(note))
    except IncidentError as exc:
        return error(404 if "no incident" in str(exc) else 409, str(exc))
    except StoreError as exc:
        return error(503, str(exc))
    if state.alerting is not None:  # acknowledge or resolve its page (the outbox makes it durable)
        try:
            incident = await asyncio.to_thread(store.incident, incident_id)
            if incident is not None:
                await state.alerting.stage.incident_changed(incident, to, str(note))
        except Exception:  # the change is made and audited; a failed notification is logged, not undone
            log.exception("incident %s: the %s notification could not be queued", incident_id, to)
    return JSONResponse(result)


@router.post("/v1/incidents/{incident_id}/acknowledge", response_model=None)
async def acknowledge(request: Request, incident_id: str) -> Response:
    return await _change(request, incident_id, "acknowledged")


@router.post("/v1/incidents/{incident_id}/resolve", response_model=None)
async def resolve(request: Request, incident_id: str) -> Response:
    return await _change(request, incident_id, "resolved")

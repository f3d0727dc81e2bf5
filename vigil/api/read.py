"""Read-only REST endpoints: what the detector found, what it could not read, and which rules it runs.

- ``GET /v1/findings?rule=&incident=&since=&limit=``: the stored findings, newest first, as
  ``{"findings": [...], "count": N}``, each with its ``id`` and the ``incident`` it was filed into (None for
  a finding stored before schema version 2 that no timeline names) (``count`` is the number returned, not
  the number stored). ``since``
  is an ISO-8601 time (a time without a zone is UTC) or epoch milliseconds, because scripts have one or
  the other at hand; anything else is a 400 that says which forms are accepted.
- ``GET /v1/dead-letters?limit=``: the newest dead letters, as ``{"dead_letters": [...], "count": N}``, so
  an analyst can see why records were rejected without a shell on the host.
- ``GET /v1/rules``: the loaded rule set: its hash (to check that every node runs the same rules), each
  rule's identity and origin, and the diagnostics the set was loaded with, warnings included.

``limit`` is 1..1000 (100 by default) for both lists: enough for a console page, small enough that one
request cannot stall the event loop the handlers share with the sources. A bad ``limit`` is FastAPI's
usual 422.

The handlers read the shared :class:`~vigil.streams.RunState` kept in ``app.state.vigil`` by
:func:`vigil.api.create_app`. Before the runner has opened the store or loaded the rules (or in a process
that has neither) they answer 503 ``{"error": ...}``: the resource is not there yet, which is not the
client's fault.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from vigil.detectors.clock import to_ms
from vigil.rules.model import Rule
from vigil.store.sqlite import Store, StoreError
from vigil.streams import RunState

#: the most items one list request returns
MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 100

#: epoch milliseconds: digits only
_MS: Final = re.compile(r"[0-9]+")
#: more digits than this overflow the store's signed 64-bit times (10**18 ms is some 31 million years)
_MS_DIGITS: Final = 18

router = APIRouter()


class SinceError(ValueError):
    """``since`` is neither an ISO-8601 time nor epoch milliseconds."""


def parse_since(value: str | None) -> int:
    """``since`` as epoch milliseconds (0 when absent or empty); raises :class:`SinceError`."""
    text = (value or "").strip()
    if not text:
        return 0
    if _MS.fullmatch(text):
        if len(text) > _MS_DIGITS:
            raise SinceError(f"since: epoch milliseconds out of range: {text[:64]!r}")
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        hint = " (in a URL, write a '+' offset as %2B, or use Z)" if " " in text else ""
        raise SinceError(
            f"since: expected an ISO-8601 time (such as 2026-01-01T00:00:00Z) or epoch milliseconds, "
            f"got {text[:64]!r}{hint}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_ms(moment)


def state_of(request: Request) -> RunState:
    """The run state behind the app (shared by the API's routers)."""
    state: RunState = request.app.state.vigil
    return state


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def read_failed(exc: Exception) -> JSONResponse:
    """503: the store is there but cannot be read now (closed at shutdown, locked, disk error)."""
    return error(503, str(exc) if isinstance(exc, StoreError) else f"store read failed: {exc}")


def store_or_error(request: Request) -> Store | JSONResponse:
    store = state_of(request).store
    return error(503, "store not open") if store is None else store


_LIMIT = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="how many items, newest first")


@router.get("/v1/findings", response_model=None)
async def findings(
    request: Request,
    rule: str | None = Query(None, description="only this rule's findings"),
    incident: str | None = Query(None, description="only the findings filed into this incident"),
    since: str | None = Query(None, description="ISO-8601 time or epoch milliseconds"),
    limit: int = _LIMIT,
) -> dict[str, Any] | JSONResponse:
    store = store_or_error(request)
    if isinstance(store, JSONResponse):
        return store
    try:
        since_ms = parse_since(since)
    except SinceError as exc:
        return error(400, str(exc))
    try:
        found = store.findings(rule=rule or None, since_ms=since_ms, limit=limit, incident=incident or None)
    except (StoreError, sqlite3.Error) as exc:
        return read_failed(exc)
    return {"findings": found, "count": len(found)}


@router.get("/v1/dead-letters", response_model=None)
async def dead_letters(request: Request, limit: int = _LIMIT) -> dict[str, Any] | JSONResponse:
    store = store_or_error(request)
    if isinstance(store, JSONResponse):
        return store
    try:
        letters = store.dead_letters(limit)
    except (StoreError, sqlite3.Error) as exc:
        return read_failed(exc)
    return {"dead_letters": letters, "count": len(letters)}


@router.get("/v1/rules", response_model=None)
async def rules(request: Request) -> dict[str, Any] | JSONResponse:
    state = state_of(request)
    ruleset = state.ruleset
    if ruleset is None:
        return error(503, "rules not loaded")
    last = state.reloader.last if state.reloader is not None else None
    return {
        "hash": ruleset.hash,
        "count": len(ruleset.rules),
        "rules": [rule_summary(rule) for rule in ruleset.rules],
        "diagnostics": [d.format() for d in ruleset.diagnostics],
        # the last hot-reload attempt: a rejected set shows its errors here while the old set runs on
        "reload": last.to_dict() if last is not None else None,
    }


def rule_summary(rule: Rule) -> dict[str, Any]:
    """What ``/v1/rules`` says about one rule: identity, form, where it came from, its content hash."""
    return {
        "id": rule.id,
        "title": rule.title,
        "severity": rule.severity,
        "status": rule.status,
        "form": rule.form,
        "kinds": sorted(rule.kinds),
        "tags": list(rule.tags),
        "path": rule.path,
        "line": rule.line,
        "hash": rule.content_hash,
    }

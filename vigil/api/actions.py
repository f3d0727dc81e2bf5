"""Action endpoints: what the response engine decided and did, and the approver's buttons.

- ``GET /v1/actions?state=&rule=&incident=&limit=``: newest first.
- ``GET /v1/actions/{id}``: one action with its plan and its timeline (every decision and step); a pending
  one also has ``proposed``: the plan approving would run, made now, and its ``plan_digest``.
- ``GET`` / ``POST /v1/response/kill-switch`` (``{"on": true, "reason": "..."}``): stop or resume every
  remediation at run time, as an approver (``vigil/response/killswitch.py``).
- ``POST /v1/actions/{id}/approve`` (optionally ``{"plan_digest": "..."}``: approve only that plan; 409 if
  the target changed and the plan with it), ``.../reject`` (``{"reason": "..."}``), ``.../rollback``: by a
  person.

Who is calling matters here as nowhere else: an approval is valid only from a principal listed in
``response.approvers`` who is not the rule's author, so these calls authenticate with a *platform* API token
(``Authorization: Bearer``, issued by ``vigil platform principals add NAME``), which names the principal,
and never with the shared ingestion token, which names nobody. The engine checks the role and the
authorship (403), the state (409) and the plan (an approval binds to the plan's digest); every refusal and
every decision is in the audit log.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from vigil.api.auth import bearer
from vigil.api.read import DEFAULT_LIMIT, MAX_LIMIT, error, state_of
from vigil.audit.log import AuditUnavailableError
from vigil.errors import VigilError
from vigil.platform.principals import TokenFileError
from vigil.response.engine import ActionForbiddenError, ResponseEngine
from vigil.response.killswitch import KillSwitchForbiddenError
from vigil.response.model import ActionState
from vigil.response.store import ActionConflictError, ActionNotFoundError

log = logging.getLogger(__name__)

router = APIRouter()

REASON_LIMIT = 16 * 1024


def _engine(request: Request) -> ResponseEngine | JSONResponse:
    engine = state_of(request).response
    return error(503, "the response engine is not running") if engine is None else engine


@router.get("/v1/actions", response_model=None)
async def list_actions(
    request: Request,
    state: ActionState | None = None,
    rule: str | None = None,
    incident: str | None = None,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
) -> dict[str, Any] | JSONResponse:
    engine = _engine(request)
    if isinstance(engine, JSONResponse):
        return engine
    found = engine.list(state=state, rule=rule, incident_id=incident, limit=limit)
    return {"actions": [a.to_json() for a in found], "count": len(found)}


@router.get("/v1/actions/{action_id}", response_model=None)
async def get_action(request: Request, action_id: str) -> dict[str, Any] | JSONResponse:
    engine = _engine(request)
    if isinstance(engine, JSONResponse):
        return engine
    action = engine.get(action_id)
    if action is None:
        return error(404, f"no action {action_id!r}")
    shown = action.to_json() | {"history": engine.history(action_id)}
    if action.state is ActionState.PENDING_APPROVAL:  # what approving would run, planned now
        shown["proposed"] = await engine.preview(action_id)
    return shown


async def _decide(
    request: Request, action_id: str, what: Literal["approve", "reject", "rollback"]
) -> Response:
    call = await _person(request)
    if isinstance(call, JSONResponse):
        return call
    engine, user, body = call
    try:
        fields = orjson.loads(body) if body else {}
        reason = str(fields.get("reason", ""))
        digest = fields.get("plan_digest")
    except (orjson.JSONDecodeError, AttributeError):
        return error(400, 'body: expected {"reason": "..."}, {"plan_digest": "..."} or nothing')
    if digest is not None and not isinstance(digest, str):
        return error(400, "plan_digest: expected a string")
    try:
        if what == "approve":
            action = await engine.approve(action_id, user, plan_digest=digest)
        elif what == "reject":
            action = await engine.reject(action_id, user, reason)
        else:
            action = await engine.rollback(action_id, user)
    except ActionNotFoundError as exc:
        return error(404, str(exc))
    except ActionForbiddenError as exc:
        return error(403, str(exc))
    except ActionConflictError as exc:
        return error(409, str(exc))
    except AuditUnavailableError as exc:
        return error(503, f"not done: it cannot be audited: {exc}")
    except VigilError as exc:
        return error(409, str(exc))
    return JSONResponse(action.to_json())


async def _person(request: Request) -> tuple[ResponseEngine, str, bytes] | JSONResponse:
    """(engine, principal, body) of a person's call, or the answer that refuses it (no engine, no platform
    token, a body over the limit)."""
    engine = _engine(request)
    if isinstance(engine, JSONResponse):
        return engine
    user = _user(request)
    if isinstance(user, JSONResponse):
        return user
    body = await request.body()
    if len(body) > REASON_LIMIT:
        return error(413, f"body over {REASON_LIMIT} bytes")
    return engine, user, body


def _user(request: Request) -> str | JSONResponse:
    """The principal of the call's platform API token, or the answer that refuses the call."""
    try:
        user = _principal(request)
    except TokenFileError as exc:  # says which file, never its content
        log.error("actions API: %s", exc)
        return error(503, "the platform's token file cannot be read; nothing was decided")
    if user is None:
        return JSONResponse(
            {"error": "a platform API token is required (vigil platform principals add NAME)"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="vigil"'},
        )
    return user


def _principal(request: Request) -> str | None:
    """The principal a platform API token names, or None."""
    runtime = state_of(request).platform
    token = bearer(request.headers.get("authorization", ""))
    if runtime is None or token is None:
        return None
    return runtime.platform.tokens.lookup(token)


@router.post("/v1/actions/{action_id}/approve", response_model=None)
async def approve(request: Request, action_id: str) -> Response:
    return await _decide(request, action_id, "approve")


@router.post("/v1/actions/{action_id}/reject", response_model=None)
async def reject(request: Request, action_id: str) -> Response:
    return await _decide(request, action_id, "reject")


@router.post("/v1/actions/{action_id}/rollback", response_model=None)
async def rollback(request: Request, action_id: str) -> Response:
    return await _decide(request, action_id, "rollback")


@router.get("/v1/response/kill-switch", response_model=None)
async def get_kill_switch(request: Request) -> dict[str, Any] | JSONResponse:
    """Whether remediation is stopped: ``on`` (effective), ``configured`` (``response.dry_run``) and the
    run-time switch (who turned it, when, why)."""
    engine = _engine(request)
    return engine if isinstance(engine, JSONResponse) else engine.kill.document()


@router.post("/v1/response/kill-switch", response_model=None)
async def set_kill_switch(request: Request) -> Response:
    """Stop (``{"on": true, "reason": "..."}``) or resume (``{"on": false}``) every remediation now, as an
    approver; audited first, kept across restarts (vigil/response/killswitch.py)."""
    call = await _person(request)
    if isinstance(call, JSONResponse):
        return call
    engine, user, body = call
    try:
        fields = orjson.loads(body)
        on, reason = fields["on"], fields.get("reason", "")
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return error(400, 'body: expected {"on": true|false, "reason": "..."}')
    if not isinstance(on, bool) or not isinstance(reason, str):
        return error(400, "on: expected true or false; reason: expected a string")
    try:
        document = await engine.kill.set(on, user, reason)
    except KillSwitchForbiddenError as exc:
        return error(403, str(exc))
    except AuditUnavailableError as exc:
        return error(503, f"not done: it cannot be audited: {exc}")
    log.warning("kill switch turned %s by %s: %s", "on" if on else "off", user, reason or "(no reason)")
    return JSONResponse(document)

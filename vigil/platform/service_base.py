"""What every route of the platform service shares: authentication, the error envelope, body models.

Authentication happens in :class:`PlatformRoute` (the route class of the platform router), *before*
FastAPI reads or validates a body, so an unauthenticated caller costs a header lookup and gets 401 whatever
it sent, never a 422 that would tell it about the body's shape. Then:

* ``Authorization: Bearer <token>`` → principal via :class:`~vigil.platform.principals.PrincipalTokens`;
  missing, malformed or unknown → ``401`` with ``WWW-Authenticate: Bearer realm="vigil-platform"``.
* ``X-Vigil-Principal`` (sent by :mod:`vigil.platform.client` with the ``principal`` argument of every
  Protocol call) must equal the token's principal, else ``403``: a program that passes one principal's
  name with another's token is a bug or an attack, and either should be loud, not silently served as the
  token's principal. Without the header (curl), the token's principal is used.
* the principal reaches the handler through the :data:`Principal` dependency and is passed to the
  provider, whose access policy decides; the router never grants or refuses anything itself.

Errors: every :class:`~vigil.platform.errors.PlatformError` becomes its
:data:`~vigil.platform.errors.HTTP_STATUS` with ``{"error": {"code", "message"}}`` (plus ``"reason"`` for
:class:`~vigil.platform.errors.ReleaseDeniedError`); invalid bodies become ``422`` with code
``invalid_request`` and each problem's location and message, but never the offending *input*, which
pydantic would echo and which may be a data key or a token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Final

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from vigil.platform.errors import HTTP_STATUS, PlatformError, ReleaseDeniedError
from vigil.platform.principals import PrincipalTokens, TokenFileError
from vigil.platform.wire import b64d

log = logging.getLogger("vigil.platform.service")

PREFIX: Final = "/platform/v1"
PRINCIPAL_HEADER: Final = "x-vigil-principal"
#: an object's metadata on upload: a JSON object of strings, ASCII (``\uXXXX`` escapes for the rest)
METADATA_HEADER: Final = "x-vigil-metadata"
REALM: Final = 'Bearer realm="vigil-platform"'
_STATE_KEY: Final = "vigil_platform_principal"
_MAX_DETAILS: Final = 10

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

#: bytes in a JSON body: base64url text, padding optional; anything else is a 422 that quotes nothing
B64 = Annotated[
    bytes,
    BeforeValidator(b64d),
    WithJsonSchema({"type": "string", "format": "base64url", "description": "base64url, no padding"}),
]


class Body(BaseModel):
    """Base of every request body: unknown keys are a 422, not silently ignored (a typo in
    ``exportable`` must not create a key with the default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Suspension(Body):
    """Suspend or restore every grant (keys) or access rule (storage) of ``grantee``."""

    grantee: str
    suspended: bool
    reason: str = ""


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(exc: PlatformError) -> JSONResponse:
    """The response for a provider's error: its class's status, code and message."""
    status = next((HTTP_STATUS[c] for c in type(exc).__mro__ if c in HTTP_STATUS), 500)
    extra = {"reason": exc.reason} if isinstance(exc, ReleaseDeniedError) else {}
    return JSONResponse(error_body(exc.code, str(exc), **extra), status_code=status)


def unauthenticated(message: str) -> JSONResponse:
    return JSONResponse(
        error_body("unauthenticated", message), status_code=401, headers={"WWW-Authenticate": REALM}
    )


def invalid_request(exc: RequestValidationError) -> JSONResponse:
    """422 with where and what, never the input (pydantic's ``input`` may hold a data key or a token)."""
    details = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in exc.errors()[:_MAX_DETAILS]
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    message = f"{'.'.join(first['loc']) or 'request'}: {first['msg']}"
    return JSONResponse(error_body("invalid_request", message, details=details), status_code=422)


def authenticate(tokens: PrincipalTokens, request: Request) -> str | JSONResponse:
    """The calling principal, or the 401/403 response (the token itself is never logged or echoed)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        log.info("platform API: %s %s refused: no bearer token", request.method, request.url.path)
        return unauthenticated("a bearer token is required")
    try:
        principal = tokens.lookup(value.strip())
    except TokenFileError as exc:  # says which file, never its content
        log.error("platform API: %s", exc)
        return JSONResponse(error_body("unavailable", "the token file cannot be read"), status_code=503)
    if principal is None:
        log.info("platform API: %s %s refused: unknown token", request.method, request.url.path)
        return unauthenticated("the bearer token is not valid")
    declared = request.headers.get(PRINCIPAL_HEADER)
    if declared is not None and declared != principal:
        log.warning(
            "platform API: %s %s refused: token of %r used as principal %r",
            request.method,
            request.url.path,
            principal,
            declared[:128],
        )
        message = f"the token belongs to principal {principal!r}, not {declared[:128]!r} ({PRINCIPAL_HEADER})"
        return JSONResponse(error_body("forbidden", message), status_code=403)
    return principal


def route_class(tokens: PrincipalTokens) -> type[APIRoute]:
    """The route class of the platform router: authenticate, then run the handler, mapping errors."""

    class PlatformRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            inner = super().get_route_handler()

            async def handler(request: Request) -> Response:
                principal = authenticate(tokens, request)
                if isinstance(principal, Response):
                    return principal
                setattr(request.state, _STATE_KEY, principal)
                try:
                    return await inner(request)
                except PlatformError as exc:
                    return error_response(exc)
                except RequestValidationError as exc:
                    return invalid_request(exc)

            return handler

    return PlatformRoute


def _principal(request: Request) -> str:
    principal: str = getattr(request.state, _STATE_KEY)
    return principal


#: the authenticated principal, for a handler's signature
Principal = Annotated[str, Depends(_principal)]

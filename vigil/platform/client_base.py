"""The HTTP plumbing shared by the remote key vault, storage and compute of :mod:`vigil.platform.client`.

:class:`Api` sends one request with the caller's principal in ``X-Vigil-Principal`` and turns every error
answer back into the :class:`~vigil.platform.errors.PlatformError` the provider raised on the server
(:func:`error_from`), and every transport failure into a ``PlatformError`` chained to the httpx error: the
Protocols promise their callers nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import quote

import httpx

from vigil.platform.errors import BY_CODE, ForbiddenError, NotFoundError, PlatformError, ReleaseDeniedError
from vigil.platform.principals import PRINCIPAL_RE
from vigil.platform.service_base import PRINCIPAL_HEADER

_BY_STATUS: Final[dict[int, type[PlatformError]]] = {
    401: ForbiddenError,
    403: ForbiddenError,
    404: NotFoundError,
}


def seg(value: str) -> str:
    """One path segment, percent-encoded ("/" included)."""
    return quote(value, safe="")


def error_from(response: httpx.Response) -> PlatformError:
    """The PlatformError an error answer stands for (the body must have been read)."""
    try:
        doc = response.json()["error"]
        code, message = str(doc["code"]), str(doc["message"])
    except (ValueError, KeyError, TypeError):
        doc, code, message = {}, "", f"the platform service answered {response.status_code}"
    cls = BY_CODE.get(code) or _BY_STATUS.get(response.status_code, PlatformError)
    if cls is ReleaseDeniedError:
        return ReleaseDeniedError(str(doc.get("reason") or message))
    return cls(message)


class ServiceUnreachableError(PlatformError):
    """The request did not get an answer (connection refused, reset, timed out): the platform service is
    down or unreachable, which says nothing about the operation. Raised chained to the httpx error."""

    code = "unreachable"


def _unreachable(exc: httpx.HTTPError) -> PlatformError:
    return ServiceUnreachableError(f"platform service request failed: {type(exc).__name__}: {exc}")


class Api:
    """One authenticated request → decoded JSON or the PlatformError it stands for (shared by the three)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @staticmethod
    def headers(principal: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        if not PRINCIPAL_RE.fullmatch(principal):
            raise ForbiddenError(f"{principal[:64]!r} is not a valid principal name")
        return {PRINCIPAL_HEADER: principal, **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        principal: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | AsyncIterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send, raise the answer's error if it is one, return its JSON (None for 204)."""
        try:
            response = await self.http.request(
                method,
                path,
                json=json,
                params=params,
                content=content,
                headers=self.headers(principal, headers),
            )
        except httpx.HTTPError as exc:
            raise _unreachable(exc) from exc
        if response.status_code >= 400:
            raise error_from(response)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise PlatformError("malformed answer from the platform service: not JSON") from None

    async def stream(self, path: str, principal: str) -> AsyncIterator[bytes]:
        """GET ``path`` and yield the body as it arrives; errors as :meth:`call`, and a body cut off
        after the answer started is a PlatformError (never a clean, short end)."""
        answered = False
        try:
            async with self.http.stream("GET", path, headers=self.headers(principal)) as response:
                answered = True
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from(response)
                async for block in response.aiter_bytes():
                    yield block
        except httpx.HTTPError as exc:
            if not answered:
                raise _unreachable(exc) from exc
            raise PlatformError(
                f"the download was cut off before its end ({type(exc).__name__}); "
                "the platform service's log says why"
            ) from exc


def items(doc: Any, key: str) -> list[Any]:
    """The list under ``key`` of a list answer (``{"keys": [...]}``); PlatformError when it is not there."""
    found = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(found, list):
        raise PlatformError(f"malformed answer from the platform service: no {key!r} list")
    return found

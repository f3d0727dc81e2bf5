"""The secure storage's routes (``/platform/v1/storage``): containers, objects, locks and access rules.

Objects travel as raw bytes, never as JSON, and never whole in memory:

* ``PUT .../objects/{name}`` hands :meth:`Storage.put` an async iterator over ``request.stream()``, so the
  provider encrypts the upload as it arrives, chunk by chunk, whatever its size. Metadata, if any, is a
  JSON object of strings in the ``X-Vigil-Metadata`` header (ASCII, ``\\uXXXX`` escapes for the rest). When
  the provider refuses the upload before reading all of it (a lock, a missing grant), the rest of the body
  is read and dropped before the error is answered: HTTP/1.1 clients write the whole request before they
  read the answer, and a connection closed under them would turn a clear 423 into a broken pipe.
* ``GET .../objects/{name}`` streams :meth:`Storage.get`. Its first chunk is pulled *before* the answer
  starts, so "no such object", "locked" and "forbidden" are proper status codes; a chunk that fails its
  authentication later (tampering) can no longer change the status, so the connection is aborted instead
  of ended, and the client sees a cut-off body, never a clean short one.

``HEAD`` on an object answers its size as ``Content-Length`` and its key version and chunk size as headers;
``GET .../info/{name}`` answers the whole :class:`~vigil.platform.storage.ObjectInfo` as JSON. Object names
may contain ``/`` (the last path segment takes the rest of the path); container names and principals may
not, and principals go in bodies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from vigil.platform import wire
from vigil.platform.errors import PlatformError
from vigil.platform.service_base import METADATA_HEADER, Body, Principal, Suspension
from vigil.platform.storage import Lock, Storage, StorageOp

log = logging.getLogger("vigil.platform.service")

_C: Final = "/storage/containers/{container}"

_RAW_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_RAW_ANSWER: Final[dict[str, Any]] = {
    "responses": {
        "200": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    }
}


class CreateContainer(Body):
    name: str
    key_name: str


class SetLock(Body):
    lock: Lock


class SetPublicRead(Body):
    public: bool


class SetAccess(Body):
    grantee: str
    ops: frozenset[StorageOp]


def parse_metadata(header: str | None) -> dict[str, str] | None:
    """The ``X-Vigil-Metadata`` header as a dict of strings; a malformed one is a 422."""
    if header is None:
        return None
    try:
        value = orjson.loads(header)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RequestValidationError(
            [{"loc": ("header", METADATA_HEADER), "msg": "expected a JSON object of strings", "type": "json"}]
        )
    return value


def add_storage_routes(router: APIRouter, storage: Storage) -> None:
    """Add the storage routes to ``router`` (whose prefix is ``/platform/v1``)."""

    @router.post("/storage/containers", status_code=201)
    async def create_container(body: CreateContainer, principal: Principal) -> dict[str, Any]:
        return wire.container_json(
            await storage.create_container(principal, body.name, key_name=body.key_name)
        )

    @router.get("/storage/containers")
    async def list_containers(principal: Principal) -> dict[str, Any]:
        return {"containers": [wire.container_json(c) for c in await storage.list_containers(principal)]}

    @router.get(_C)
    async def get_container(container: str, principal: Principal) -> dict[str, Any]:
        return wire.container_json(await storage.get_container(principal, container))

    @router.delete(_C, status_code=204, response_class=Response)
    async def delete_container(container: str, principal: Principal) -> Response:
        await storage.delete_container(principal, container)
        return Response(status_code=204)

    @router.put(_C + "/lock")
    async def set_lock(container: str, body: SetLock, principal: Principal) -> dict[str, Any]:
        return wire.container_json(await storage.set_lock(principal, container, body.lock))

    @router.put(_C + "/public-read")
    async def set_public_read(container: str, body: SetPublicRead, principal: Principal) -> dict[str, Any]:
        return wire.container_json(await storage.set_public_read(principal, container, body.public))

    @router.put(_C + "/access")
    async def set_access(container: str, body: SetAccess, principal: Principal) -> dict[str, Any]:
        info = await storage.set_access(principal, container, body.grantee, frozenset(body.ops))
        return wire.container_json(info)

    @router.post(_C + "/rewrap")
    async def rewrap(container: str, principal: Principal) -> dict[str, Any]:
        return {"rewrapped": await storage.rewrap(principal, container)}

    @router.post("/storage/suspend", status_code=204, response_class=Response)
    async def suspend(body: Suspension, principal: Principal) -> Response:
        await storage.set_suspended(principal, body.grantee, body.suspended, reason=body.reason)
        return Response(status_code=204)

    @router.get(_C + "/objects")
    async def list_objects(container: str, principal: Principal, prefix: str = "") -> dict[str, Any]:
        found = await storage.list_objects(principal, container, prefix=prefix)
        return {"objects": [wire.object_json(o) for o in found]}

    @router.put(_C + "/objects/{name:path}", status_code=201, openapi_extra=_RAW_BODY)
    async def put_object(container: str, name: str, request: Request, principal: Principal) -> dict[str, Any]:
        metadata = parse_metadata(request.headers.get(METADATA_HEADER))
        stream = request.stream()

        async def blocks() -> AsyncIterator[bytes]:
            async for block in stream:
                if block:
                    yield block

        try:
            info = await storage.put(principal, container, name, blocks(), metadata=metadata)
        except PlatformError:
            async for _ in stream:  # drain: see the module docstring
                pass
            raise
        return wire.object_json(info)

    @router.get(_C + "/objects/{name:path}", response_class=StreamingResponse, openapi_extra=_RAW_ANSWER)
    async def get_object(container: str, name: str, principal: Principal) -> StreamingResponse:
        chunks = storage.get(principal, container, name)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = b""
        return StreamingResponse(
            _relay(first, chunks, f"{container}/{name}"), media_type="application/octet-stream"
        )

    @router.head(_C + "/objects/{name:path}", response_class=Response)
    async def head_object(container: str, name: str, principal: Principal) -> Response:
        info = await storage.head(principal, container, name)
        headers = {
            "content-length": str(info.size),
            "content-type": "application/octet-stream",
            "x-vigil-key-version": info.key_version,
            "x-vigil-chunk-size": str(info.chunk_size),
        }
        return Response(status_code=200, headers=headers)

    @router.get(_C + "/info/{name:path}")
    async def object_info(container: str, name: str, principal: Principal) -> dict[str, Any]:
        return wire.object_json(await storage.head(principal, container, name))

    @router.delete(_C + "/objects/{name:path}", status_code=204, response_class=Response)
    async def delete_object(container: str, name: str, principal: Principal) -> Response:
        await storage.delete(principal, container, name)
        return Response(status_code=204)


async def _relay(first: bytes, rest: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
    """``first``, then the rest; a failure mid-way is re-raised, so the server aborts the connection."""
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    except PlatformError as exc:
        log.warning("platform API: download of %s aborted: %s: %s", what, exc.code, exc)
        raise
    finally:
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()

""":class:`RemoteStorage`: the :class:`~vigil.platform.storage.Storage` Protocol over the platform service.

Objects are never held whole here: :meth:`RemoteStorage.put` hands an async iterator straight to httpx,
which uploads it with chunked transfer encoding as it yields, and :meth:`RemoteStorage.get` yields the
download as it arrives. Only :meth:`RemoteStorage.read` joins an object, as its Protocol says (small
objects). Like the local provider's, ``get`` is an async generator: its errors (no such object, a lock, a
missing grant) are raised on the first iteration.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from vigil.platform import wire
from vigil.platform.client_base import Api, items, seg
from vigil.platform.errors import PlatformError
from vigil.platform.service_base import METADATA_HEADER
from vigil.platform.storage import ContainerInfo, Lock, ObjectInfo, StorageOp


def _c(container: str) -> str:
    return f"/storage/containers/{seg(container)}"


def _object(container: str, name: str, what: str = "objects") -> str:
    return f"{_c(container)}/{what}/{seg(name)}"


class RemoteStorage:
    """The secure storage of the platform service, seen through ``api``."""

    def __init__(self, api: Api) -> None:
        self._api = api

    def __repr__(self) -> str:
        return "RemoteStorage()"

    async def create_container(self, principal: str, name: str, *, key_name: str) -> ContainerInfo:
        body = {"name": name, "key_name": key_name}
        return wire.container_from(await self._api.call("POST", "/storage/containers", principal, json=body))

    async def get_container(self, principal: str, name: str) -> ContainerInfo:
        return wire.container_from(await self._api.call("GET", _c(name), principal))

    async def list_containers(self, principal: str) -> list[ContainerInfo]:
        doc = await self._api.call("GET", "/storage/containers", principal)
        return [wire.container_from(c) for c in items(doc, "containers")]

    async def delete_container(self, principal: str, name: str) -> None:
        await self._api.call("DELETE", _c(name), principal)

    async def set_lock(self, principal: str, container: str, lock: Lock) -> ContainerInfo:
        body = {"lock": Lock(lock).value}
        return wire.container_from(await self._api.call("PUT", f"{_c(container)}/lock", principal, json=body))

    async def set_public_read(self, principal: str, container: str, public: bool) -> ContainerInfo:
        path = f"{_c(container)}/public-read"
        return wire.container_from(await self._api.call("PUT", path, principal, json={"public": public}))

    async def set_access(
        self, principal: str, container: str, grantee: str, ops: frozenset[StorageOp]
    ) -> ContainerInfo:
        body = {"grantee": grantee, "ops": sorted(StorageOp(op).value for op in ops)}
        return wire.container_from(
            await self._api.call("PUT", f"{_c(container)}/access", principal, json=body)
        )

    async def put(
        self,
        principal: str,
        container: str,
        name: str,
        data: bytes | AsyncIterator[bytes],
        *,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        headers = {"content-type": "application/octet-stream"}
        if metadata is not None:  # header values must be ASCII: json escapes the rest as \uXXXX
            headers[METADATA_HEADER] = json.dumps(metadata, ensure_ascii=True, separators=(",", ":"))
        doc = await self._api.call("PUT", _object(container, name), principal, content=data, headers=headers)
        return wire.object_from(doc)

    async def get(self, principal: str, container: str, name: str) -> AsyncIterator[bytes]:
        async for block in self._api.stream(_object(container, name), principal):
            yield block

    async def read(self, principal: str, container: str, name: str) -> bytes:
        return b"".join([block async for block in self.get(principal, container, name)])

    async def head(self, principal: str, container: str, name: str) -> ObjectInfo:
        return wire.object_from(await self._api.call("GET", _object(container, name, "info"), principal))

    async def list_objects(self, principal: str, container: str, *, prefix: str = "") -> list[ObjectInfo]:
        params = {"prefix": prefix} if prefix else None
        doc = await self._api.call("GET", f"{_c(container)}/objects", principal, params=params)
        return [wire.object_from(o) for o in items(doc, "objects")]

    async def delete(self, principal: str, container: str, name: str) -> None:
        await self._api.call("DELETE", _object(container, name), principal)

    async def set_suspended(self, principal: str, grantee: str, suspended: bool, *, reason: str = "") -> None:
        body = {"grantee": grantee, "suspended": suspended, "reason": reason}
        await self._api.call("POST", "/storage/suspend", principal, json=body)

    async def rewrap(self, principal: str, container: str) -> int:
        doc = await self._api.call("POST", f"{_c(container)}/rewrap", principal)
        count = doc.get("rewrapped") if isinstance(doc, dict) else None
        if not isinstance(count, int):
            raise PlatformError("malformed answer from the platform service: no 'rewrapped' count")
        return count

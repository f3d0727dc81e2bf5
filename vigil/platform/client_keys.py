""":class:`RemoteKeyVault`: the :class:`~vigil.platform.keyvault.KeyVault` Protocol over the platform service.

Each method is one request to the route of the same name in :mod:`vigil.platform.service_keys`; bytes go
as base64url (:func:`vigil.platform.wire.b64e`), answers come back through the :mod:`vigil.platform.wire`
decoders. A data key passes through this class only in the ``wrap`` request and the ``unwrap`` answer and
is never kept, logged or put in an exception.
"""

from __future__ import annotations

from typing import Any

from vigil.platform import wire
from vigil.platform.client_base import Api, items, seg
from vigil.platform.errors import PlatformError
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyOp, KeyVersion, ReleasedKey, Signature, WrappedKey


class RemoteKeyVault:
    """The key vault of the platform service, seen through ``api``."""

    def __init__(self, api: Api) -> None:
        self._api = api

    def __repr__(self) -> str:
        return "RemoteKeyVault()"

    async def create_key(
        self,
        principal: str,
        name: str,
        kind: KeyKind = KeyKind.AES256,
        *,
        exportable: bool = False,
        release_policy: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> KeyInfo:
        body = {
            "name": name,
            "kind": KeyKind(kind).value,
            "exportable": exportable,
            "release_policy": release_policy,
            "tags": tags,
        }
        return wire.key_info_from(await self._api.call("POST", "/keys", principal, json=body))

    async def get_key(self, principal: str, name: str) -> KeyInfo:
        return wire.key_info_from(await self._api.call("GET", f"/keys/{seg(name)}", principal))

    async def list_keys(self, principal: str, *, include_deleted: bool = False) -> list[KeyInfo]:
        params = {"include_deleted": "true" if include_deleted else "false"}
        doc = await self._api.call("GET", "/keys", principal, params=params)
        return [wire.key_info_from(k) for k in items(doc, "keys")]

    async def rotate_key(self, principal: str, name: str) -> KeyVersion:
        return wire.key_version_from(await self._api.call("POST", f"/keys/{seg(name)}/rotate", principal))

    async def set_version_enabled(self, principal: str, name: str, version: str, enabled: bool) -> KeyVersion:
        path = f"/keys/{seg(name)}/versions/{seg(version)}"
        return wire.key_version_from(
            await self._api.call("PATCH", path, principal, json={"enabled": enabled})
        )

    async def set_release_policy(self, principal: str, name: str, policy: dict[str, Any] | None) -> KeyInfo:
        path = f"/keys/{seg(name)}/release-policy"
        return wire.key_info_from(await self._api.call("PUT", path, principal, json={"policy": policy}))

    async def delete_key(self, principal: str, name: str) -> KeyInfo:
        return wire.key_info_from(await self._api.call("DELETE", f"/keys/{seg(name)}", principal))

    async def recover_key(self, principal: str, name: str) -> KeyInfo:
        return wire.key_info_from(await self._api.call("POST", f"/keys/{seg(name)}/recover", principal))

    async def purge_key(self, principal: str, name: str) -> None:
        await self._api.call("DELETE", f"/keys/{seg(name)}/purge", principal)

    async def wrap(self, principal: str, name: str, data_key: bytes) -> WrappedKey:
        body = {"data_key": wire.b64e(data_key)}
        return wire.wrapped_key_from(
            await self._api.call("POST", f"/keys/{seg(name)}/wrap", principal, json=body)
        )

    async def unwrap(self, principal: str, wrapped: WrappedKey) -> bytes:
        body = {"version": wrapped.version, "ciphertext": wire.b64e(wrapped.ciphertext)}
        doc = await self._api.call("POST", f"/keys/{seg(wrapped.key_name)}/unwrap", principal, json=body)
        return _bytes_field(doc, "data_key")

    async def sign(self, principal: str, name: str, data: bytes) -> Signature:
        body = {"data": wire.b64e(data)}
        return wire.signature_from(
            await self._api.call("POST", f"/keys/{seg(name)}/sign", principal, json=body)
        )

    async def hmac(self, principal: str, name: str, data: bytes, version: str | None = None) -> bytes:
        body = {"data": wire.b64e(data)} | ({"version": version} if version is not None else {})
        return _bytes_field(
            await self._api.call("POST", f"/keys/{seg(name)}/hmac", principal, json=body), "mac"
        )

    async def release(
        self, principal: str, name: str, attestation_token: str, recipient_public_key: bytes
    ) -> ReleasedKey:
        body = {
            "attestation_token": attestation_token,
            "recipient_public_key": wire.b64e(recipient_public_key),
        }
        doc = await self._api.call("POST", f"/keys/{seg(name)}/release", principal, json=body)
        return wire.released_key_from(doc)

    async def grant(self, principal: str, grantee: str, key_name: str, ops: set[KeyOp]) -> None:
        body = {"grantee": grantee, "key_name": key_name, "ops": sorted(KeyOp(op).value for op in ops)}
        await self._api.call("POST", "/key-grants", principal, json=body)

    async def revoke(
        self, principal: str, grantee: str, key_name: str, ops: set[KeyOp] | None = None
    ) -> None:
        params = {"grantee": grantee, "key_name": key_name}
        if ops is not None:
            params["ops"] = ",".join(sorted(KeyOp(op).value for op in ops))
        await self._api.call("DELETE", "/key-grants", principal, params=params)

    async def set_suspended(self, principal: str, grantee: str, suspended: bool, *, reason: str = "") -> None:
        body = {"grantee": grantee, "suspended": suspended, "reason": reason}
        await self._api.call("POST", "/key-grants/suspend", principal, json=body)


def _bytes_field(doc: Any, key: str) -> bytes:
    try:
        return wire.b64d(doc[key])
    except (KeyError, TypeError, ValueError):
        raise PlatformError(f"malformed answer from the platform service: no base64url {key!r}") from None

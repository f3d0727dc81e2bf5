"""The key vault's routes (``/platform/v1/keys``, ``/platform/v1/key-grants``): one per KeyVault method.

Each handler decodes its body (a :class:`~vigil.platform.service_base.Body`, unknown keys refused),
calls the one :class:`~vigil.platform.keyvault.KeyVault` method with the authenticated principal, and
encodes the result with :mod:`vigil.platform.wire`. Only three answers carry secret or secret-derived
bytes, because carrying them is their purpose: ``unwrap`` (the data key), ``wrap`` (its wrapped form) and
``release`` (the key wrapped to the attested recipient). Nothing here logs a body.

Grants live beside the keys rather than under ``/keys/{name}`` because a grant may name every key
(``"*"``) and because grantees are principal names, which go in bodies and query strings, not in paths.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError

from vigil.platform import wire
from vigil.platform.keyvault import KeyKind, KeyOp, KeyVault, WrappedKey
from vigil.platform.service_base import B64, Body, Principal, Suspension


class CreateKey(Body):
    name: str
    kind: KeyKind = KeyKind.AES256
    exportable: bool = False
    release_policy: dict[str, Any] | None = None
    tags: dict[str, str] | None = None


class VersionEnabled(Body):
    enabled: bool


class ReleasePolicy(Body):
    policy: dict[str, Any] | None


class Wrap(Body):
    data_key: B64


class Unwrap(Body):
    version: str
    ciphertext: B64


class Data(Body):
    data: B64


class Hmac(Data):
    #: a version of the key (default: the current one)
    version: str | None = None


class Release(Body):
    attestation_token: str
    recipient_public_key: B64


class Grant(Body):
    grantee: str
    key_name: str
    ops: set[KeyOp]


def parse_ops(text: str) -> set[KeyOp]:
    """``wrap,unwrap`` → the set (empty text: the empty set); an unknown name is a 422."""
    try:
        return {KeyOp(part.strip()) for part in text.split(",") if part.strip()}
    except ValueError:
        known = ", ".join(op.value for op in KeyOp)
        raise RequestValidationError(
            [{"loc": ("query", "ops"), "msg": f"unknown operation; known: {known}", "type": "enum"}]
        ) from None


def add_key_routes(router: APIRouter, keys: KeyVault) -> None:
    """Add the key vault's routes to ``router`` (whose prefix is ``/platform/v1``)."""

    @router.post("/keys", status_code=201)
    async def create_key(body: CreateKey, principal: Principal) -> dict[str, Any]:
        info = await keys.create_key(
            principal,
            body.name,
            body.kind,
            exportable=body.exportable,
            release_policy=body.release_policy,
            tags=body.tags,
        )
        return wire.key_info_json(info)

    @router.get("/keys")
    async def list_keys(principal: Principal, include_deleted: bool = False) -> dict[str, Any]:
        found = await keys.list_keys(principal, include_deleted=include_deleted)
        return {"keys": [wire.key_info_json(k) for k in found]}

    @router.get("/keys/{name}")
    async def get_key(name: str, principal: Principal) -> dict[str, Any]:
        return wire.key_info_json(await keys.get_key(principal, name))

    @router.post("/keys/{name}/rotate")
    async def rotate_key(name: str, principal: Principal) -> dict[str, Any]:
        return wire.key_version_json(await keys.rotate_key(principal, name))

    @router.patch("/keys/{name}/versions/{version}")
    async def set_version_enabled(
        name: str, version: str, body: VersionEnabled, principal: Principal
    ) -> dict[str, Any]:
        return wire.key_version_json(await keys.set_version_enabled(principal, name, version, body.enabled))

    @router.put("/keys/{name}/release-policy")
    async def set_release_policy(name: str, body: ReleasePolicy, principal: Principal) -> dict[str, Any]:
        return wire.key_info_json(await keys.set_release_policy(principal, name, body.policy))

    @router.delete("/keys/{name}")
    async def delete_key(name: str, principal: Principal) -> dict[str, Any]:
        return wire.key_info_json(await keys.delete_key(principal, name))

    @router.post("/keys/{name}/recover")
    async def recover_key(name: str, principal: Principal) -> dict[str, Any]:
        return wire.key_info_json(await keys.recover_key(principal, name))

    @router.delete("/keys/{name}/purge", status_code=204, response_class=Response)
    async def purge_key(name: str, principal: Principal) -> Response:
        await keys.purge_key(principal, name)
        return Response(status_code=204)

    @router.post("/keys/{name}/wrap")
    async def wrap(name: str, body: Wrap, principal: Principal) -> dict[str, Any]:
        return (await keys.wrap(principal, name, body.data_key)).to_json()

    @router.post("/keys/{name}/unwrap")
    async def unwrap(name: str, body: Unwrap, principal: Principal) -> dict[str, Any]:
        data_key = await keys.unwrap(principal, WrappedKey(name, body.version, body.ciphertext))
        return {"data_key": wire.b64e(data_key)}

    @router.post("/keys/{name}/sign")
    async def sign(name: str, body: Data, principal: Principal) -> dict[str, Any]:
        return wire.signature_json(await keys.sign(principal, name, body.data))

    @router.post("/keys/{name}/hmac")
    async def hmac(name: str, body: Hmac, principal: Principal) -> dict[str, Any]:
        return {"key": name, "mac": wire.b64e(await keys.hmac(principal, name, body.data, body.version))}

    @router.post("/keys/{name}/release")
    async def release(name: str, body: Release, principal: Principal) -> dict[str, Any]:
        released = await keys.release(principal, name, body.attestation_token, body.recipient_public_key)
        return wire.released_key_json(released)

    @router.post("/key-grants", status_code=204, response_class=Response)
    async def grant(body: Grant, principal: Principal) -> Response:
        await keys.grant(principal, body.grantee, body.key_name, set(body.ops))
        return Response(status_code=204)

    @router.delete("/key-grants", status_code=204, response_class=Response)
    async def revoke(
        principal: Principal,
        grantee: Annotated[str, Query()],
        key_name: Annotated[str, Query()],
        ops: Annotated[
            str | None, Query(description="comma-separated operations to revoke; absent: all of them")
        ] = None,
    ) -> Response:
        await keys.revoke(principal, grantee, key_name, None if ops is None else parse_ops(ops))
        return Response(status_code=204)

    @router.post("/key-grants/suspend", status_code=204, response_class=Response)
    async def suspend(body: Suspension, principal: Principal) -> Response:
        await keys.set_suspended(principal, body.grantee, body.suspended, reason=body.reason)
        return Response(status_code=204)

"""The platform service: the local key vault, storage and compute, served to other processes over HTTP.

Training nodes and the ``vigil platform`` CLI are separate processes; they reach the platform that runs
inside the daemon through this API on the loopback interface, and :mod:`vigil.platform.client` turns it
back into the :class:`~vigil.platform.keyvault.KeyVault`, :class:`~vigil.platform.storage.Storage` and
:class:`~vigil.platform.compute.Compute` Protocols, so code written against the interfaces runs the same
in-process or remote. The full route table, with curl examples, is ``docs/platform-api.md``.

Design:

* One route per Protocol method, under ``/platform/v1/`` (a version in the path, so a node built against
  v1 keeps working while v2 is added beside it): keys in :mod:`.service_keys`, storage in
  :mod:`.service_storage`, compute in :mod:`.service_compute`, shared authentication and the error
  envelope in :mod:`.service_base`.
* The router is thin on purpose. It authenticates the caller (a bearer token per principal,
  :mod:`vigil.platform.principals`), passes the principal to the provider, and translates: JSON and
  base64url in, :mod:`vigil.platform.wire` shapes out, each
  :class:`~vigil.platform.errors.PlatformError` to its status. It never decides access: the provider's
  policy does, so the in-process and the remote path cannot disagree about who may do what.
* Objects stream both ways (no body is held whole), so a 1 GiB dataset costs the daemon a chunk of
  memory, not a gigabyte.
* Nothing is logged but the method, the path, the principal and the error code: no body, no token, no
  key material.

:func:`platform_router` returns an :class:`~fastapi.APIRouter` that the daemon mounts on its app (or a
test on a bare :class:`~fastapi.FastAPI`, see :func:`create_platform_app`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI

from vigil.platform.compute import Compute
from vigil.platform.keyvault import KeyVault
from vigil.platform.local.attestation import LocalAttestationService
from vigil.platform.principals import PrincipalTokens
from vigil.platform.service_attestation import add_attestation_routes
from vigil.platform.service_base import PREFIX, route_class
from vigil.platform.service_compute import add_compute_routes
from vigil.platform.service_keys import add_key_routes
from vigil.platform.service_storage import add_storage_routes
from vigil.platform.storage import Storage

__all__ = ["PREFIX", "create_platform_app", "platform_router"]


def platform_router(
    keys: KeyVault,
    storage: Storage,
    compute: Compute,
    tokens: PrincipalTokens,
    attestation: tuple[Callable[[], LocalAttestationService], dict[str, Any], Callable[[str, bytes], None]]
    | None = None,
) -> APIRouter:
    """Every platform route under ``/platform/v1``, authenticated with ``tokens``; the attestation routes
    when ``attestation`` (the service's factory, the token JWKS, and where attested node keys go) is given."""
    router = APIRouter(prefix=PREFIX, tags=["platform"], route_class=route_class(tokens))
    add_key_routes(router, keys)
    add_storage_routes(router, storage)
    add_compute_routes(router, compute)
    if attestation is not None:
        add_attestation_routes(router, attestation[0], compute, attestation[1], attestation[2])
    return router


def create_platform_app(
    keys: KeyVault, storage: Storage, compute: Compute, tokens: PrincipalTokens
) -> FastAPI:
    """A FastAPI app serving only the platform routes (a standalone platform process, and tests)."""
    app = FastAPI(title="Vigil platform", docs_url=None, redoc_url=None)
    app.include_router(platform_router(keys, storage, compute, tokens))
    return app

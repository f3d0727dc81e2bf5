"""The platform's Protocols over HTTP: what a training node or the CLI uses to reach the daemon's platform.

:class:`PlatformClient` holds one :class:`httpx.AsyncClient` (one connection pool) and exposes
``.keys``, ``.storage`` and ``.compute``, which implement
:class:`~vigil.platform.keyvault.KeyVault`, :class:`~vigil.platform.storage.Storage` and
:class:`~vigil.platform.compute.Compute` with the same signatures (checked by mypy at the end of this
module; the classes live in :mod:`.client_keys`, :mod:`.client_storage` and here, the shared request
plumbing in :mod:`.client_base`), so a remediator or a node written against the interfaces runs
unchanged against the local provider in-process or against this client::

    async with PlatformClient("http://127.0.0.1:8080", token) as platform:
        wrapped = await platform.keys.wrap("node-1", "datasets", data_key)

Contract with the service (:mod:`vigil.platform.service`):

* the ``principal`` argument travels as ``X-Vigil-Principal``; the service answers 403 when it is not the
  token's principal, so code that passes the wrong name fails loudly instead of acting as someone else;
* an error answer is raised again as the same class (:data:`~vigil.platform.errors.BY_CODE`) with the
  server's message (``ReleaseDeniedError`` with its ``reason``); an answer without the error envelope is
  mapped by status (401/403: ``ForbiddenError``, 404: ``NotFoundError``, else ``PlatformError``);
* a request that gets no answer (refused, reset, timed out) is
  :class:`~vigil.platform.client_base.ServiceUnreachableError`, a ``PlatformError`` (the Protocols promise
  nothing else) chained to the httpx error, so the CLI can say "is the daemon running?";
* objects stream both ways: ``put`` of an async iterator uploads with chunked encoding as the iterator
  yields, ``get`` yields the download as it arrives. A download the server cuts off (it aborts the
  connection when a chunk fails authentication after the answer started) raises ``PlatformError``, so a
  truncated object is never mistaken for a whole one.

The client ignores proxy environment variables (``trust_env=False``): the service is on loopback, and a
proxy would see every bearer token. The token is kept only in the pool's default headers, never in
``repr``.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from vigil.platform import wire
from vigil.platform.client_base import Api, items, seg
from vigil.platform.client_keys import RemoteKeyVault
from vigil.platform.client_storage import RemoteStorage
from vigil.platform.compute import Compute, Node, NodeState
from vigil.platform.service_base import PREFIX

if TYPE_CHECKING:
    from vigil.platform.keyvault import KeyVault
    from vigil.platform.storage import Storage

__all__ = ["PlatformClient", "RemoteCompute", "RemoteKeyVault", "RemoteStorage"]


class RemoteCompute:
    """:class:`~vigil.platform.compute.Compute` over the platform service."""

    def __init__(self, api: Api) -> None:
        self._api = api

    async def register(
        self,
        principal: str,
        node_id: str,
        *,
        node_principal: str,
        measurement: str,
        control_url: str = "",
        labels: dict[str, str] | None = None,
    ) -> Node:
        body = {
            "node_id": node_id,
            "node_principal": node_principal,
            "measurement": measurement,
            "control_url": control_url,
            "labels": labels,
        }
        return wire.node_from(await self._api.call("POST", "/nodes", principal, json=body))

    async def get_node(self, principal: str, node_id: str) -> Node:
        return wire.node_from(await self._api.call("GET", f"/nodes/{seg(node_id)}", principal))

    async def list_nodes(self, principal: str) -> list[Node]:
        doc = await self._api.call("GET", "/nodes", principal)
        return [wire.node_from(n) for n in items(doc, "nodes")]

    async def set_state(self, principal: str, node_id: str, state: NodeState) -> Node:
        path = f"/nodes/{seg(node_id)}/state"
        return wire.node_from(await self._api.call("POST", path, principal, json={"state": state.value}))

    async def quarantine(
        self, principal: str, node_id: str, *, reason: str, evidence: dict[str, Any]
    ) -> Node:
        body = {"reason": reason, "evidence": evidence}
        path = f"/nodes/{seg(node_id)}/quarantine"
        return wire.node_from(await self._api.call("POST", path, principal, json=body))

    async def release(self, principal: str, node_id: str, *, reason: str) -> Node:
        path = f"/nodes/{seg(node_id)}/release"
        return wire.node_from(await self._api.call("POST", path, principal, json={"reason": reason}))


class PlatformClient:
    """The platform service at ``base_url`` (``http://127.0.0.1:PORT``), authenticated with ``token``.

    An async context manager; :meth:`aclose` closes the connection pool when it is used without one.
    ``timeout`` applies to each network step (connect, each read and write), not to a whole transfer,
    so a long streamed upload is fine as long as it keeps moving.
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url + PREFIX,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            trust_env=False,
        )
        api = Api(self._http)
        self.keys = RemoteKeyVault(api)
        self.storage = RemoteStorage(api)
        self.compute = RemoteCompute(api)

    def __repr__(self) -> str:
        return f"PlatformClient({self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> PlatformClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


if TYPE_CHECKING:  # mypy --strict proves that each remote class satisfies its Protocol exactly

    def _conforms(client: PlatformClient) -> tuple[KeyVault, Storage, Compute]:
        return client.keys, client.storage, client.compute

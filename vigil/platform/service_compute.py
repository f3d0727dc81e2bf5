"""The compute routes (``/platform/v1/nodes``): the training-node registry and containment.

``POST /nodes/{id}/state`` is a node's own report (attested, running, stopped); ``quarantine`` and
``release`` are what a remediator or an operator does. The provider checks the transitions and who may
make them (:data:`~vigil.platform.compute.TRANSITIONS`); a refused transition is its
:class:`~vigil.platform.errors.ConflictError`, 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from vigil.platform import wire
from vigil.platform.compute import Compute, NodeState
from vigil.platform.service_base import Body, Principal


class Register(Body):
    node_id: str
    node_principal: str
    measurement: str
    control_url: str = ""
    labels: dict[str, str] | None = None


class SetState(Body):
    state: NodeState


class Quarantine(Body):
    reason: str
    evidence: dict[str, Any] = {}


class ReleaseNode(Body):
    reason: str


def add_compute_routes(router: APIRouter, compute: Compute) -> None:
    """Add the compute routes to ``router`` (whose prefix is ``/platform/v1``)."""

    @router.post("/nodes", status_code=201)
    async def register(body: Register, principal: Principal) -> dict[str, Any]:
        node = await compute.register(
            principal,
            body.node_id,
            node_principal=body.node_principal,
            measurement=body.measurement,
            control_url=body.control_url,
            labels=body.labels,
        )
        return wire.node_json(node)

    @router.get("/nodes")
    async def list_nodes(principal: Principal) -> dict[str, Any]:
        return {"nodes": [wire.node_json(n) for n in await compute.list_nodes(principal)]}

    @router.get("/nodes/{node_id}")
    async def get_node(node_id: str, principal: Principal) -> dict[str, Any]:
        return wire.node_json(await compute.get_node(principal, node_id))

    @router.post("/nodes/{node_id}/state")
    async def set_state(node_id: str, body: SetState, principal: Principal) -> dict[str, Any]:
        return wire.node_json(await compute.set_state(principal, node_id, body.state))

    @router.post("/nodes/{node_id}/quarantine")
    async def quarantine(node_id: str, body: Quarantine, principal: Principal) -> dict[str, Any]:
        node = await compute.quarantine(principal, node_id, reason=body.reason, evidence=dict(body.evidence))
        return wire.node_json(node)

    @router.post("/nodes/{node_id}/release")
    async def release(node_id: str, body: ReleaseNode, principal: Principal) -> dict[str, Any]:
        return wire.node_json(await compute.release(principal, node_id, reason=body.reason))

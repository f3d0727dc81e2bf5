"""The compute interface: the registry of training nodes and what Vigil may do to them.

A node is a process (locally) or a confidential VM (on Azure) that trains on protected data. It is
registered ``pending`` with its principal and expected launch measurement, becomes ``attested`` when the
attestation service accepts its evidence, ``running`` when it reports that it trains, and ``stopped`` when it
ends. ``quarantine`` is the containment a remediator applies: it revokes the node principal's key release
and storage access *first* (so it is cut off even if it never hears the stop), tells the node to stop
through its control channel, and marks it ``quarantined``; ``release`` undoes the access revocation and
returns the node to ``pending`` (it must attest again before it gets keys).

Allowed transitions (anything else is :class:`~vigil.platform.errors.ConflictError`)::

    pending ──attest──▶ attested ──run──▶ running ──stop──▶ stopped ──attest──▶ attested (its next run)
       ▲                    │                │                 │
       └──── release ◀── quarantined ◀───────┴─────────────────┘  (quarantine from any state)

A stopped node is quarantined too: it can attest and run again, so what a quarantine cuts (key release,
storage access) matters as much between runs as during one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from vigil.platform.errors import ConflictError, ForbiddenError


class NodeState(enum.StrEnum):
    PENDING = "pending"
    ATTESTED = "attested"
    RUNNING = "running"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"


#: state -> states it may move to by a node report (attest/run/stop) or by quarantine/release
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.PENDING: frozenset({NodeState.ATTESTED, NodeState.QUARANTINED, NodeState.STOPPED}),
    NodeState.ATTESTED: frozenset(
        {NodeState.RUNNING, NodeState.QUARANTINED, NodeState.STOPPED, NodeState.PENDING}
    ),
    NodeState.RUNNING: frozenset({NodeState.QUARANTINED, NodeState.STOPPED}),
    NodeState.QUARANTINED: frozenset({NodeState.PENDING}),
    NodeState.STOPPED: frozenset({NodeState.PENDING, NodeState.ATTESTED, NodeState.QUARANTINED}),
}


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    principal: str
    measurement: str  # expected launch measurement, hex (96 chars for SEV-SNP)
    state: NodeState
    updated: float
    #: where the node listens for control messages (stop); empty when it polls instead
    control_url: str = ""
    #: the reason given for the last quarantine, and the evidence references kept with it
    quarantine: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


#: the states a node may report about itself (every other change is an admin's or the platform's)
SELF_REPORTS: frozenset[NodeState] = frozenset({NodeState.RUNNING, NodeState.STOPPED})


def check_state_change(node: Node, principal: str, state: NodeState, admins: frozenset[str]) -> bool:
    """Whether ``principal`` moving ``node`` to ``state`` changes anything: False when it is there already,
    True when allowed; ForbiddenError or ConflictError otherwise. One rule for every Compute provider."""
    if principal not in admins:
        if principal != node.principal:
            raise ForbiddenError(f"principal {principal!r} may not change node {node.id!r}")
        if state not in SELF_REPORTS:
            raise ForbiddenError(f"a node may report only running or stopped, not {state.value}")
    if state == NodeState.QUARANTINED:
        raise ConflictError("use quarantine to quarantine a node (it cuts its access first)")
    if node.state == NodeState.QUARANTINED:
        raise ConflictError(f"node {node.id!r} is quarantined; only a release changes its state")
    if state == node.state:
        return False
    if state not in TRANSITIONS[node.state]:
        raise ConflictError(f"node {node.id!r} cannot go from {node.state.value} to {state.value}")
    return True


class Compute(Protocol):
    async def register(
        self,
        principal: str,
        node_id: str,
        *,
        node_principal: str,
        measurement: str,
        control_url: str = "",
        labels: dict[str, str] | None = None,
    ) -> Node: ...

    async def get_node(self, principal: str, node_id: str) -> Node: ...

    async def list_nodes(self, principal: str) -> list[Node]: ...

    async def set_state(self, principal: str, node_id: str, state: NodeState) -> Node:
        """A node's own report (attested by the attestation service, running, stopped)."""
        ...

    async def quarantine(
        self, principal: str, node_id: str, *, reason: str, evidence: dict[str, Any]
    ) -> Node: ...

    async def release(self, principal: str, node_id: str, *, reason: str) -> Node: ...

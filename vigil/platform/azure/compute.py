"""The compute interface on Azure: training nodes are the VMs of the configured resource groups.

Node ids. A node's id is its **VM name** (what a training node registers as, and what rules and the
``protected.nodes`` setting name). A full ARM VM id (``/subscriptions/…/virtualMachines/<name>``, as events
carry in ``resource.id``) is accepted wherever an id is, provided its subscription and group are configured;
a bare name that exists in two configured groups is ambiguous (ConflictError: use the full id).

The registry is the VM's own tags, so it needs no database and any Vigil instance reads the same truth:
``vigil-principal`` (else the VM's system-assigned identity), ``vigil-measurement``, ``vigil-control-url``
and ``vigil-state`` (``pending``/``attested``/``running``, the nodes' reports); other tags are the node's
``labels``. A node's state is, in order: ``quarantined`` when a quarantine finished (``vigil-q-done``); the
recorded pre-quarantine state while one is under way (so it is resumed, never taken as done); ``stopped``
when the VM is stopped or deallocated; the reported ``vigil-state``; else ``running``/``pending`` from the
power state.

Quarantine (:mod:`vigil.platform.azure.quarantine`) first suspends the node principal in the key vault and
storage when those providers are given (as locally: cut off even if the VM ignores everything), then
isolates the network, snapshots the OS disk, stops or deallocates the VM and tags the record on it;
``release`` undoes it from that record and puts the node back to ``pending`` (it must attest again). The
evidence references passed to ``quarantine`` go to the audit log with the remediation; tags only keep the
reason, the actor and what rollback needs.

Who may do what mirrors the local provider: ``admins`` everything, ``readers`` read, a node's principal its
own record and its ``running``/``stopped`` reports. Azure's own authorization is the RBAC of Vigil's identity:
:data:`RBAC_ACTIONS` lists what it needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import VirtualMachine

from vigil.platform.azure import network, quarantine
from vigil.platform.azure.arm import ArmConfig, arm_errors, parse_id
from vigil.platform.azure.lro import LroStore
from vigil.platform.azure.network import NetworkIsolation
from vigil.platform.azure.quarantine import TAG_DONE, TAG_ID, TAG_PRE_STATE, VmQuarantine, power_state
from vigil.platform.compute import Node, NodeState, check_state_change
from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
)
from vigil.platform.events import NullObserver, PlatformEvent, PlatformObserver
from vigil.platform.keyvault import KeyVault
from vigil.platform.storage import Storage

TAG_PRINCIPAL: Final = "vigil-principal"
TAG_MEASUREMENT: Final = "vigil-measurement"
TAG_CONTROL: Final = "vigil-control-url"
TAG_STATE: Final = "vigil-state"
REGISTRY_TAGS: Final = (TAG_PRINCIPAL, TAG_MEASUREMENT, TAG_CONTROL, TAG_STATE)
STOPPED_POWER: Final = frozenset({"stopped", "stopping", "deallocated", "deallocating"})

#: what Vigil's identity needs for this provider (least privilege, for docs/azure.md)
RBAC_ACTIONS: Final = quarantine.RBAC_ACTIONS + network.RBAC_ACTIONS


class AzureCompute:
    """Training nodes as Azure VMs (implements :class:`vigil.platform.compute.Compute`)."""

    RBAC_ACTIONS: Final = RBAC_ACTIONS

    def __init__(
        self,
        arm: ArmConfig,
        *,
        resource_groups: Sequence[str],
        lro_store: LroStore | Path,
        stop_mode: str = "deallocate",
        snapshot: bool = True,
        forensic_sources: Sequence[str] = (),
        vault: KeyVault | None = None,
        storage: Storage | None = None,
        observer: PlatformObserver | None = None,
        admins: Iterable[str] = ("vigil",),
        readers: Iterable[str] = (),
        service_principal: str = "vigil",
    ) -> None:
        if not resource_groups:
            raise InvalidError("AzureCompute needs at least one resource group")
        self._arm = arm
        self._groups = tuple(resource_groups)
        self._store = lro_store if isinstance(lro_store, LroStore) else LroStore(lro_store)
        self._client = arm.client(ComputeManagementClient)
        self._net = NetworkIsolation(arm, forensic_sources=tuple(forensic_sources))
        self._q = VmQuarantine(
            arm, self._client, self._net, self._store, stop_mode=stop_mode, snapshot=snapshot
        )
        self._vault, self._storage = vault, storage
        self._observer: PlatformObserver = observer or NullObserver()
        self._admins, self._readers = frozenset(admins), frozenset(readers)
        self._service = service_principal

    async def close(self) -> None:
        await self._client.close()
        await self._net.close()
        self._store.close()

    # -- reads ---------------------------------------------------------------------------------------------

    async def get_node(self, principal: str, node_id: str) -> Node:
        _, node = await self._load(node_id)
        if principal not in self._admins | self._readers and principal != node.principal:
            raise ForbiddenError(f"principal {principal!r} may not read node {node_id!r}")
        return node

    async def list_nodes(self, principal: str) -> list[Node]:
        if principal not in self._admins | self._readers:
            raise ForbiddenError(f"principal {principal!r} may not list nodes")
        names: list[tuple[str, str]] = []
        for group in self._groups:
            with arm_errors(f"list VMs of group {group}"):
                names += [(group, str(vm.name)) async for vm in self._client.virtual_machines.list(group)]
        gate = asyncio.Semaphore(8)

        async def one(group: str, name: str) -> Node:
            async with gate:
                return _node(await self._q.get_vm(group, name))

        return sorted(await asyncio.gather(*(one(g, n) for g, n in names)), key=lambda n: n.id)

    # -- registry ------------------------------------------------------------------------------------------

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
        self._require_admin(principal, "register nodes")
        if not node_principal:
            raise InvalidError("a node needs a principal")
        _check_measurement(measurement)
        group, vm = await self._load_vm(node_id)
        tags = dict(vm.tags or {})
        if tags.get(TAG_PRINCIPAL):
            raise AlreadyExistsError(f"node {node_id!r} is already registered")
        if any(n.principal == node_principal for n in await self.list_nodes(principal)):
            raise AlreadyExistsError(f"principal {node_principal!r} already belongs to another node")
        new = {**tags, **(labels or {}), TAG_PRINCIPAL: node_principal, TAG_MEASUREMENT: measurement.lower(),
               TAG_STATE: NodeState.PENDING.value}  # fmt: skip
        if control_url:
            new[TAG_CONTROL] = control_url
        await self._record("register", principal, str(vm.name), {"node_principal": node_principal})
        await self._q.set_tags(group, str(vm.name), new)
        return (await self._load(node_id))[1]

    async def set_state(self, principal: str, node_id: str, state: NodeState) -> Node:
        (group, vm), node = await self._load(node_id)
        state = NodeState(state)
        if not check_state_change(node, principal, state, self._admins):
            return node
        await self._record("state", principal, node.id, {"from": node.state.value, "to": state.value})
        await self._q.set_tags(group, str(vm.name), {**(vm.tags or {}), TAG_STATE: state.value})
        return (await self._load(node_id))[1]

    # -- containment ---------------------------------------------------------------------------------------

    async def quarantine(
        self, principal: str, node_id: str, *, reason: str, evidence: dict[str, Any]
    ) -> Node:
        self._require_admin(principal, "quarantine nodes")
        (group, vm), node = await self._load(node_id)
        if node.state == NodeState.QUARANTINED:
            return node  # idempotent: a retried remediation changes nothing
        resuming = TAG_ID in (vm.tags or {})
        if node.state == NodeState.STOPPED and not resuming:
            raise ConflictError(f"node {node_id!r} is stopped; there is nothing to quarantine")
        await self._record("quarantine", principal, node.id, {"reason": reason, "from": node.state.value})
        await self._suspend(node.principal, True, f"quarantined: {reason}")
        await self._q.quarantine(
            group, str(vm.name), reason=reason, by=principal, node_state=node.state.value
        )
        return (await self._load(node_id))[1]

    async def release(self, principal: str, node_id: str, *, reason: str) -> Node:
        self._require_admin(principal, "release nodes")
        (group, vm), node = await self._load(node_id)
        if TAG_ID not in (vm.tags or {}):
            raise ConflictError(f"node {node_id!r} is {node.state.value}, not quarantined")
        await self._record("release", principal, node.id, {"reason": reason})
        await self._q.release(group, str(vm.name), final_tags={TAG_STATE: NodeState.PENDING.value})
        await self._suspend(node.principal, False, f"released: {reason}")
        return (await self._load(node_id))[1]

    # -- internals -----------------------------------------------------------------------------------------

    async def _suspend(self, node_principal: str, suspended: bool, reason: str) -> None:
        if not node_principal:
            return
        for provider in (self._vault, self._storage):
            if provider is not None:
                await provider.set_suspended(self._service, node_principal, suspended, reason=reason)

    async def _load(self, node_id: str) -> tuple[tuple[str, VirtualMachine], Node]:
        group, vm = await self._load_vm(node_id)
        return (group, vm), _node(vm)

    async def _load_vm(self, node_id: str) -> tuple[str, VirtualMachine]:
        """``(group, vm)`` of a node id (VM name or full VM id) in the configured groups."""
        if node_id.startswith("/"):
            sub, group, provider, kind, name = parse_id(node_id)
            if provider.lower() != "microsoft.compute" or kind.lower() != "virtualmachines":
                raise InvalidError(f"{node_id!r} is not a virtual machine id")
            known = {g.lower(): g for g in self._groups}
            if sub.lower() != self._arm.subscription_id.lower() or group.lower() not in known:
                raise NotFoundError(f"VM {node_id!r} is outside the configured subscription and groups")
            return known[group.lower()], await self._q.get_vm(known[group.lower()], name)
        if not node_id:
            raise InvalidError("a node id is needed")
        found: list[tuple[str, VirtualMachine]] = []
        for group in self._groups:
            try:
                found.append((group, await self._q.get_vm(group, node_id)))
            except NotFoundError:
                continue
        if not found:
            raise NotFoundError(f"no node {node_id!r} (no such VM in groups {list(self._groups)})")
        if len(found) > 1:
            raise ConflictError(
                f"node {node_id!r} names VMs in groups {[g for g, _ in found]}; use the VM id"
            )
        return found[0]

    async def _record(self, op: str, principal: str, node: str, details: dict[str, Any]) -> None:
        await self._observer.record(
            PlatformEvent(f"platform.node.{op}", principal, node, {"node": node, **details})
        )

    def _require_admin(self, principal: str, what: str) -> None:
        if principal not in self._admins:
            raise ForbiddenError(f"principal {principal!r} may not {what}")


def _node(vm: VirtualMachine) -> Node:
    tags = dict(vm.tags or {})
    identity = vm.identity.principal_id if vm.identity is not None else None
    created = vm.time_created.timestamp() if vm.time_created is not None else 0.0
    return Node(
        id=str(vm.name),
        principal=tags.get(TAG_PRINCIPAL) or str(identity or ""),
        measurement=tags.get(TAG_MEASUREMENT, ""),
        state=_state(tags, power_state(vm)),
        updated=created,
        control_url=tags.get(TAG_CONTROL, ""),
        quarantine=_record_of(tags) if tags.get(TAG_DONE) else {},
        labels={k: v for k, v in tags.items() if not k.startswith("vigil-")},
    )


def _state(tags: dict[str, str], power: str) -> NodeState:
    if tags.get(TAG_DONE):
        return NodeState.QUARANTINED
    if TAG_ID in tags:  # under way: report the state it was found in, so a resumed remediation finishes it
        return NodeState(tags.get(TAG_PRE_STATE, NodeState.RUNNING.value))
    if power in STOPPED_POWER:
        return NodeState.STOPPED
    reported = tags.get(TAG_STATE, "")
    if reported in (NodeState.PENDING, NodeState.ATTESTED, NodeState.RUNNING):
        return NodeState(reported)
    return NodeState.RUNNING if power == "running" else NodeState.PENDING


def _record_of(tags: dict[str, str]) -> dict[str, Any]:
    """The quarantine record on the VM, as the Node's ``quarantine`` field."""
    qid = tags[TAG_ID]
    return {
        "id": qid,
        "reason": tags.get(quarantine.TAG_REASON, ""),
        "by": tags.get(quarantine.TAG_BY, ""),
        "done": tags.get(TAG_DONE, ""),
        "previous_power": tags.get(quarantine.TAG_PRE_POWER, ""),
        "previous_state": tags.get(TAG_PRE_STATE, ""),
        "previous_nsgs": {
            k[len(quarantine.TAG_NSG) :]: v for k, v in tags.items() if k.startswith(quarantine.TAG_NSG)
        },
        "snapshot": tags.get(quarantine.TAG_SNAPSHOT, ""),
    }


def _check_measurement(measurement: str) -> None:
    """A launch measurement is a SHA-384 digest in hex (SEV-SNP ``MEASUREMENT``, 48 bytes)."""
    try:
        raw = bytes.fromhex(measurement)
    except ValueError:
        raise InvalidError("measurement must be hex (the SHA-384 launch digest, 96 characters)") from None
    if len(raw) != 48:
        raise InvalidError(f"measurement must be 48 bytes (96 hex characters), not {len(raw)}")

"""The quarantine of one Azure VM and its exact undo, as resumable steps whose record lives on the VM.

Order, and why:

1. **Record first.** Before anything changes, the VM is tagged with what a rollback needs: the quarantine
   id (``vigil-q-id``, a UTC timestamp), reason, who ordered it, the power state and node state as found,
   and for every NIC the NSG it had (``vigil-q-nsg-<nic>`` = ``<group>/<nsg>`` or ``none``; a full NSG id
   could pass the 256-character tag limit, and an NSG always lives in its NIC's subscription). A step
   re-run after a crash finds the record and never overwrites it, so the "previous" NSG is never the
   quarantine NSG. Tags keep the record with the resource: any Vigil instance, or a person with the portal,
   can read how to undo it.
2. **Network isolation** (:mod:`vigil.platform.azure.network`): the per-VM deny-all NSG with the platform
   service-tag rules and ``flush_connection``, put on every NIC. Fastest effect first.
3. **Forensic snapshot** of the OS disk, under the deterministic name ``vigil-q-<vm>-<id>`` (a re-run finds
   it), with network access ``DenyAll``. Taken *before* the power change: a confidential VM's memory cannot
   be captured from the host, so the disk as it was running is the evidence.
4. **Power off** (``power_off``: ``powerOff`` with ``skipShutdown``, fastest; keeps the hardware) or
   **deallocate** (``deallocate``, the default: releases it) or ``none``. A POST through
   :func:`~vigil.platform.azure.lro.run_lro`, so a crash mid-wait resumes polling instead of re-sending;
   skipped when the VM is already in (or moving to) the target state; when the POST itself fails
   ambiguously (503 after it ran, a dropped connection) the state is read instead of re-sending it.
5. **Done** (``vigil-q-done``) is tagged last. Until then the node reports its recorded pre-quarantine state,
   so a half-done quarantine is never mistaken for containment and a resumed remediation finishes it.

Release undoes 2 and 4 from the record (the saved NSG back on each NIC, then the isolation NSG deleted; the
VM started when it was running before) and drops the record tags last. The snapshot is evidence and stays.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Final

from azure.core.exceptions import AzureError
from azure.core.polling import AsyncLROPoller
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.compute.models import (
    CreationData,
    Snapshot,
    SnapshotProperties,
    VirtualMachine,
    VirtualMachineUpdate,
)

from vigil.platform.azure.arm import ArmConfig, arm_errors, parse_id
from vigil.platform.azure.lro import LroStore, OperationLostError, run_lro
from vigil.platform.azure.network import NetworkIsolation, nsg_name
from vigil.platform.errors import ConflictError, InvalidError, NotFoundError, UnavailableError

PREFIX: Final = "vigil-q-"
TAG_ID: Final = "vigil-q-id"
TAG_REASON: Final = "vigil-q-reason"
TAG_BY: Final = "vigil-q-by"
TAG_PRE_POWER: Final = "vigil-q-pre-power"
TAG_PRE_STATE: Final = "vigil-q-pre-state"
TAG_NSG: Final = "vigil-q-nsg-"
TAG_DONE: Final = "vigil-q-done"
TAG_SNAPSHOT: Final = "vigil-q-snapshot"
NO_NSG: Final = "none"
STOP_MODES: Final = ("deallocate", "power_off", "none")

#: power action -> (states that mean it is done, states that mean it is on its way)
TARGETS: Final = {
    "deallocate": ({"deallocated"}, {"deallocating"}),
    "powerOff": ({"stopped", "deallocated"}, {"stopping", "deallocating"}),
    "start": ({"running"}, {"starting"}),
}

RBAC_ACTIONS: Final = (
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/write",
    "Microsoft.Compute/virtualMachines/instanceView/read",
    "Microsoft.Compute/virtualMachines/deallocate/action",
    "Microsoft.Compute/virtualMachines/powerOff/action",
    "Microsoft.Compute/virtualMachines/start/action",
    "Microsoft.Compute/disks/read",
    "Microsoft.Compute/snapshots/read",
    "Microsoft.Compute/snapshots/write",
)


def power_state(vm: VirtualMachine) -> str:
    """``running``, ``stopped``, ``deallocated``, ``starting`` ... from the instance view (``unknown``)."""
    view = vm.instance_view
    for status in (view.statuses if view is not None else None) or []:
        code = str(status.code or "")
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1].lower()
    return "unknown"


def nic_ids(vm: VirtualMachine) -> list[str]:
    profile = vm.network_profile
    return [str(ref.id) for ref in (profile.network_interfaces if profile else None) or [] if ref.id]


def nsg_tag(nic_id: str) -> str:
    return TAG_NSG + parse_id(nic_id)[4]


def snapshot_name(vm: str, qid: str) -> str:
    return f"{PREFIX}{vm[: 80 - len(PREFIX) - len(qid) - 1]}-{qid}"


class VmQuarantine:
    """Quarantine and release of VMs in one subscription (the steps above)."""

    def __init__(
        self,
        arm: ArmConfig,
        compute: ComputeManagementClient,
        network: NetworkIsolation,
        store: LroStore,
        *,
        stop_mode: str = "deallocate",
        snapshot: bool = True,
    ) -> None:
        if stop_mode not in STOP_MODES:
            raise InvalidError(f"stop_mode must be one of {STOP_MODES}, not {stop_mode!r}")
        self._arm, self._compute, self._net, self._store = arm, compute, network, store
        self._stop_mode, self._snapshot = stop_mode, snapshot

    async def get_vm(self, group: str, name: str) -> VirtualMachine:
        with arm_errors(f"read VM {group}/{name}"):
            return await self._compute.virtual_machines.get(group, name, expand="instanceView")

    async def set_tags(self, group: str, name: str, tags: dict[str, str]) -> None:
        """Replace the VM's whole tag map (ARM PATCH semantics; callers merge from a fresh read)."""
        with arm_errors(f"tag VM {group}/{name}"):
            poller = await self._compute.virtual_machines.begin_update(
                group, name, VirtualMachineUpdate(tags=tags)
            )
            await poller.result()

    async def quarantine(
        self, group: str, name: str, *, reason: str, by: str, node_state: str
    ) -> dict[str, str]:
        """Run (or resume) every step; returns the record tags."""
        vm = await self.get_vm(group, name)
        tags = dict(vm.tags or {})
        record = {k: v for k, v in tags.items() if k.startswith(PREFIX)}
        if TAG_ID not in record:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            record = {TAG_ID: stamp, TAG_REASON: reason[:256] or "vigil quarantine", TAG_BY: by[:256],
                      TAG_PRE_POWER: power_state(vm), TAG_PRE_STATE: node_state}  # fmt: skip
        missing = [nic for nic in nic_ids(vm) if nsg_tag(nic) not in record]
        for nic in missing:
            record[nsg_tag(nic)] = self._ref(await self._net.nic_nsg(nic))
        if any(tags.get(k) != v for k, v in record.items()):
            await self.set_tags(group, name, {**tags, **record})
            tags.update(record)
        qid = record[TAG_ID]
        nsg_tags = {"vigil-quarantine-of": name, TAG_ID: qid}
        nsg_id, _ = await self._net.ensure_nsg(group, nsg_name(name), str(vm.location), nsg_tags)
        for nic in nic_ids(vm):
            await self._net.set_nic_nsg(nic, nsg_id)
        if self._snapshot:
            record[TAG_SNAPSHOT] = await self._take_snapshot(group, vm, qid, record[TAG_REASON])
        if self._stop_mode != "none":
            await self._power(group, name, "deallocate" if self._stop_mode == "deallocate" else "powerOff")
        if TAG_DONE not in tags:
            record[TAG_DONE] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            await self.set_tags(group, name, {**tags, **record})
        return record

    async def release(self, group: str, name: str, *, final_tags: dict[str, str]) -> None:
        """Undo from the record on the VM: NSGs back, isolation NSG gone, power back, record tags dropped
        (and ``final_tags`` set) last. ConflictError when the VM carries no quarantine record."""
        vm = await self.get_vm(group, name)
        tags = dict(vm.tags or {})
        if TAG_ID not in tags:
            raise ConflictError(f"VM {group}/{name} carries no quarantine record; nothing to release")
        for nic in nic_ids(vm):
            saved = tags.get(nsg_tag(nic), NO_NSG)
            await self._net.set_nic_nsg(nic, None if saved == NO_NSG else self._unref(saved))
        await self._net.delete_nsg(group, nsg_name(name))
        if tags.get(TAG_PRE_POWER) in TARGETS["start"][0] | TARGETS["start"][1]:
            await self._power(group, name, "start")
        kept = {k: v for k, v in tags.items() if not k.startswith(PREFIX)}
        await self.set_tags(group, name, {**kept, **final_tags})

    # -- steps ----------------------------------------------------------------------------------------------

    async def _take_snapshot(self, group: str, vm: VirtualMachine, qid: str, reason: str) -> str:
        name = snapshot_name(str(vm.name), qid)
        try:
            with arm_errors(f"read snapshot {group}/{name}"):
                await self._compute.snapshots.get(group, name)
            return name
        except NotFoundError:
            pass
        disk = (
            vm.storage_profile.os_disk.managed_disk
            if vm.storage_profile and vm.storage_profile.os_disk
            else None
        )
        if disk is None or not disk.id:
            raise ConflictError(f"VM {vm.name} has no managed OS disk to snapshot")
        props = SnapshotProperties(
            creation_data=CreationData(create_option="Copy", source_resource_id=disk.id),
            incremental=False,
            network_access_policy="DenyAll",
            public_network_access="Disabled",
        )
        tags = {"vigil-quarantine-of": str(vm.name), TAG_ID: qid, TAG_REASON: reason[:256]}
        body = Snapshot(location=str(vm.location), tags=tags, properties=props)
        with arm_errors(f"snapshot the OS disk of VM {vm.name}"):
            poller = await self._compute.snapshots.begin_create_or_update(group, name, body)
            await poller.result()
        return name

    async def _power(self, group: str, name: str, action: str) -> None:
        """Take the VM to ``action``'s target state once: resume a persisted operation, skip when the VM is
        there or on its way, reconcile by reading state when the POST fails ambiguously."""
        done, moving = TARGETS[action]
        key = f"{self._arm.subscription_id}/{group}/{name}/{action}"
        if self._store.get(key) is None:
            current = power_state(await self.get_vm(group, name))
            if current in done:
                return
            if current in moving:
                await self._wait_power(group, name, done)
                return
        ops = self._compute.virtual_machines

        async def begin(**kw: Any) -> AsyncLROPoller[None]:
            if action == "deallocate":
                poller: AsyncLROPoller[None] = await ops.begin_deallocate(group, name, **kw)
            elif action == "powerOff":
                poller = await ops.begin_power_off(group, name, skip_shutdown=True, **kw)
            else:
                poller = await ops.begin_start(group, name, **kw)
            return poller

        timeout = self._arm.operation_timeout
        try:
            await run_lro(self._store, key, begin, lambda tok: begin(continuation_token=tok), timeout=timeout)
        except (AzureError, OperationLostError):
            # the POST may have run: read the state instead of sending it again
            current = power_state(await self.get_vm(group, name))
            if current not in done | moving:
                raise UnavailableError(
                    f"VM {group}/{name}: {action} failed and the VM is {current}; the step will be retried"
                ) from None
            await self._wait_power(group, name, done)

    async def _wait_power(self, group: str, name: str, done: set[str]) -> None:
        deadline = time.monotonic() + self._arm.operation_timeout
        while (current := power_state(await self.get_vm(group, name))) not in done:
            if time.monotonic() > deadline:
                raise UnavailableError(f"VM {group}/{name} is still {current}; the step will be retried")
            await asyncio.sleep(self._arm.polling_interval)

    def _ref(self, nsg_id: str | None) -> str:
        if nsg_id is None:
            return NO_NSG
        _, group, _, _, name = parse_id(nsg_id)
        return f"{group}/{name}"

    def _unref(self, ref: str) -> str:
        group, _, name = ref.partition("/")
        return self._net.nsg_id(group, name)

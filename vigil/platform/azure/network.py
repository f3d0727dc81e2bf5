"""Network isolation of a VM: a deny-all NSG that also closes the platform paths, put on every NIC.

Why each rule. A plain deny-all (``*`` to ``*``, both directions) does **not** stop a VM talking to the Azure
platform: IMDS (169.254.169.254, where a managed identity mints tokens), Azure DNS (168.63.129.16) and the
KMS licensing endpoint bypass NSG rules unless a rule names their service tags (reference/azure.md §5.2).
A quarantined VM that can still mint tokens from IMDS is not quarantined, so the isolation NSG denies the
``AzurePlatformIMDS``, ``AzurePlatformDNS`` and ``AzurePlatformLKM`` destinations explicitly, ahead of the
deny-all. The WireServer channel of the VM agent on 168.63.129.16 is platform plumbing that NSGs do not
govern; the quarantine also stops or deallocates the VM and the key vault cuts the node's key release, which
is what contains a VM that ignores the network.

``flush_connection`` is set on the NSG so that flows already established are re-evaluated against the new
rules; without it an open exfiltration session survives the quarantine. Optional ``forensic_sources``
(CIDRs of a jump host) get an inbound allow ahead of the deny so investigators can still reach the VM.

The NSG is per VM (``vigil-quarantine-<vm>``) in the VM's group and region: the rollback can delete it
without asking who else uses it, and two quarantines never fight over one. ARM PUTs are full replacements
and these clients send no ``If-Match``, so every change is GET → modify → PUT, and skipped when the GET
shows it done.
"""

from __future__ import annotations

from typing import Any, Final

from azure.mgmt.network.aio import NetworkManagementClient
from azure.mgmt.network.models import (
    NetworkSecurityGroup,
    NetworkSecurityGroupPropertiesFormat,
    SecurityRule,
    SecurityRulePropertiesFormat,
)

from vigil.platform.azure.arm import ArmConfig, arm_errors, parse_id
from vigil.platform.errors import ConflictError, NotFoundError

#: platform service tags that a deny-all misses (reference/azure.md §5.2)
PLATFORM_TAGS: Final = ("AzurePlatformIMDS", "AzurePlatformDNS", "AzurePlatformLKM")

RBAC_ACTIONS: Final = (
    "Microsoft.Network/networkSecurityGroups/read",
    "Microsoft.Network/networkSecurityGroups/write",
    "Microsoft.Network/networkSecurityGroups/delete",
    "Microsoft.Network/networkSecurityGroups/join/action",
    "Microsoft.Network/networkInterfaces/read",
    "Microsoft.Network/networkInterfaces/write",
)


def nsg_name(vm: str) -> str:
    """The isolation NSG of ``vm`` (ARM names stop at 80 characters)."""
    return f"vigil-quarantine-{vm}"[:80]


def isolation_rules(forensic_sources: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rules as plain data (name, priority, direction, access, source, destination), lowest first."""
    rules: list[dict[str, Any]] = []
    for i, cidr in enumerate(forensic_sources):
        rules.append(_rule(f"vigil-allow-forensic-{i}", 100 + i, "Inbound", "Allow", cidr, "*"))
    rules.append(_rule("vigil-deny-all-in", 200, "Inbound", "Deny", "*", "*"))
    for i, tag in enumerate(PLATFORM_TAGS):
        rules.append(_rule(f"vigil-deny-{tag}", 100 + i, "Outbound", "Deny", "*", tag))
    rules.append(_rule("vigil-deny-all-out", 200, "Outbound", "Deny", "*", "*"))
    return rules


def _rule(name: str, priority: int, direction: str, access: str, src: str, dst: str) -> dict[str, Any]:
    return {
        "name": name, "priority": priority, "direction": direction, "access": access, "protocol": "*",
        "source_address_prefix": src, "source_port_range": "*",
        "destination_address_prefix": dst, "destination_port_range": "*",
    }  # fmt: skip


def _props(rule: dict[str, Any]) -> SecurityRulePropertiesFormat:
    return SecurityRulePropertiesFormat(**{k: v for k, v in rule.items() if k != "name"})


def _rules_of(nsg: NetworkSecurityGroup) -> list[dict[str, Any]]:
    keys = ("name", "priority", "direction", "access", "protocol", "source_address_prefix",
            "source_port_range", "destination_address_prefix", "destination_port_range")  # fmt: skip
    found = [{k: getattr(rule, k, None) for k in keys} for rule in nsg.security_rules or []]
    return sorted(found, key=lambda r: (str(r["direction"]), int(r["priority"] or 0)))


class NetworkIsolation:
    """The NSG and NIC operations of a quarantine, over one ``NetworkManagementClient``."""

    def __init__(self, arm: ArmConfig, *, forensic_sources: tuple[str, ...] = ()) -> None:
        self._arm = arm
        self._client = arm.client(NetworkManagementClient)
        self._rules = isolation_rules(forensic_sources)

    async def close(self) -> None:
        await self._client.close()

    def nsg_id(self, group: str, name: str) -> str:
        return self._arm.resource_id(group, "Microsoft.Network", "networkSecurityGroups", name)

    async def ensure_nsg(
        self, group: str, name: str, location: str, tags: dict[str, str]
    ) -> tuple[str, bool]:
        """Create the isolation NSG, or reuse it when it exists with exactly these rules and
        ``flush_connection``; returns ``(id, changed)``."""
        want = sorted(self._rules, key=lambda r: (r["direction"], r["priority"]))
        current = await self._get_nsg(group, name)
        if current is not None and current.flush_connection and _rules_of(current) == want:
            return str(current.id or self.nsg_id(group, name)), False
        rules = [SecurityRule(name=r["name"], properties=_props(r)) for r in self._rules]
        props = NetworkSecurityGroupPropertiesFormat(flush_connection=True, security_rules=rules)
        body = NetworkSecurityGroup(location=location, tags=tags, properties=props)
        with arm_errors(f"create isolation NSG {group}/{name}"):
            poller = await self._client.network_security_groups.begin_create_or_update(group, name, body)
            made = await poller.result()
        return str(made.id or self.nsg_id(group, name)), True

    async def nic_nsg(self, nic_id: str) -> str | None:
        """The id of the NSG on NIC ``nic_id`` (None when it has none)."""
        _, group, _, _, name = parse_id(nic_id)
        with arm_errors(f"read NIC {group}/{name}"):
            nic = await self._client.network_interfaces.get(group, name)
        return None if nic.network_security_group is None else nic.network_security_group.id

    async def set_nic_nsg(self, nic_id: str, nsg_id: str | None) -> bool:
        """Put ``nsg_id`` on the NIC (None detaches); False when it was there already."""
        _, group, _, _, name = parse_id(nic_id)
        with arm_errors(f"read NIC {group}/{name}"):
            nic = await self._client.network_interfaces.get(group, name)
        current = None if nic.network_security_group is None else nic.network_security_group.id
        if (current or "").lower() == (nsg_id or "").lower():
            return False
        nic.network_security_group = None if nsg_id is None else NetworkSecurityGroup(id=nsg_id)
        with arm_errors(f"set the NSG of NIC {group}/{name}"):
            poller = await self._client.network_interfaces.begin_create_or_update(group, name, nic)
            await poller.result()
        return True

    async def delete_nsg(self, group: str, name: str) -> bool:
        """Delete the isolation NSG once no NIC uses it; False when it is gone already."""
        current = await self._get_nsg(group, name)
        if current is None:
            return False
        users = [nic.id for nic in current.network_interfaces or []]
        if users:
            raise ConflictError(f"isolation NSG {group}/{name} is still on NICs {users}; not deleting it")
        with arm_errors(f"delete isolation NSG {group}/{name}"):
            poller = await self._client.network_security_groups.begin_delete(group, name)
            await poller.result()
        return True

    async def _get_nsg(self, group: str, name: str) -> NetworkSecurityGroup | None:
        try:
            with arm_errors(f"read NSG {group}/{name}"):
                return await self._client.network_security_groups.get(group, name)
        except NotFoundError:
            return None

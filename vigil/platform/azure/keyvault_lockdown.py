"""Vault lockdown through Azure Resource Manager: network closed, public access off, a principal removed.

When a vault's keys are being misused (a leaked identity releasing or unwrapping from an unexpected
network), the data-plane remedies (rotate, disable a version, tighten a release policy) are not enough:
the vault itself must stop answering. ``azure-mgmt-keyvault`` (``../shared/reference/azure.md`` §5.1)
offers three reversible levers, each here as an idempotent step:

* :meth:`AzureVaultLockdown.lock_network`: ``PATCH …/vaults/{vault}`` with ``networkAcls.defaultAction =
  Deny`` (keeping ``bypass``, ``AzureServices`` by default, and the IP rules given) and ``publicNetworkAccess
  = Disabled``;
* :meth:`AzureVaultLockdown.remove_access_policy`: ``PUT …/accessPolicies/remove`` listing *every*
  permission the principal holds (a partial list leaves the rest), which drops its entry. A vault in RBAC
  mode ignores access policies: the call is refused (ConflictError) and the role assignment must go instead;
* :meth:`AzureVaultLockdown.restore`: puts back what a :class:`VaultSnapshot` recorded: the network ACLs and
  public access as they were (one PATCH), and the access-policy entries of the principals named
  (``PUT …/accessPolicies/add``).

The record is the snapshot taken *before* the first change (:meth:`AzureVaultLockdown.snapshot`), kept by
the caller with its plan, as every remediator keeps ``plan.before``: re-running a lock step after a crash
then cannot overwrite the record with the already-locked state. Snapshots are JSON (ARM's own field
names) and hold no secret: network rules, object ids and permission names.

Every call is idempotent (GET, PATCH, PUT of a fixed body) and goes through :mod:`.keyvault_retry`:
429/5xx retried, ``Retry-After`` honoured, errors mapped onto :mod:`vigil.platform.errors`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from azure.core.credentials_async import AsyncTokenCredential
from azure.mgmt.keyvault import models
from azure.mgmt.keyvault.aio import KeyVaultManagementClient

from vigil.platform.azure.keyvault_retry import RetrySettings, call
from vigil.platform.errors import ConflictError, InvalidError

log = logging.getLogger(__name__)

#: what Azure applies when a vault has no networkAcls: open to every network
DEFAULT_NETWORK_ACLS: Final = {
    "bypass": "AzureServices",
    "defaultAction": "Allow",
    "ipRules": [],
    "virtualNetworkRules": [],
}
#: RBAC actions each lever needs on the vault (Key Vault Contributor has them)
RBAC_ACTIONS: Final = {
    "snapshot": ("Microsoft.KeyVault/vaults/read",),
    "lock_network": ("Microsoft.KeyVault/vaults/read", "Microsoft.KeyVault/vaults/write"),
    "remove_access_policy": (
        "Microsoft.KeyVault/vaults/read",
        "Microsoft.KeyVault/vaults/accessPolicies/write",
    ),
    "restore": (
        "Microsoft.KeyVault/vaults/read",
        "Microsoft.KeyVault/vaults/write",
        "Microsoft.KeyVault/vaults/accessPolicies/write",
    ),
}


@dataclass(frozen=True, slots=True)
class VaultSnapshot:
    """What the levers change, as ARM returned it: the record a rollback restores."""

    vault_id: str
    network_acls: dict[str, Any] | None
    public_network_access: str | None
    access_policies: tuple[dict[str, Any], ...]
    rbac: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "vault_id": self.vault_id,
            "network_acls": copy.deepcopy(self.network_acls),
            "public_network_access": self.public_network_access,
            "access_policies": [copy.deepcopy(p) for p in self.access_policies],
            "rbac": self.rbac,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VaultSnapshot:
        return cls(
            vault_id=str(data["vault_id"]),
            network_acls=copy.deepcopy(data.get("network_acls")),
            public_network_access=data.get("public_network_access"),
            access_policies=tuple(copy.deepcopy(p) for p in data.get("access_policies") or ()),
            rbac=bool(data.get("rbac", False)),
        )

    def policy_of(self, object_id: str) -> dict[str, Any] | None:
        return next((p for p in self.access_policies if p.get("objectId") == object_id), None)

    @property
    def locked(self) -> bool:
        acls = self.network_acls or DEFAULT_NETWORK_ACLS
        return acls.get("defaultAction") == "Deny" and self.public_network_access == "Disabled"


class AzureVaultLockdown:
    """The vault-level levers of one vault (module docstring)."""

    def __init__(
        self,
        client: KeyVaultManagementClient,
        resource_group: str,
        vault_name: str,
        *,
        retry: RetrySettings | None = None,
    ) -> None:
        self._client = client
        self._group = resource_group
        self._vault = vault_name
        self._retry = retry or RetrySettings()

    @classmethod
    def connect(
        cls,
        credential: AsyncTokenCredential,
        subscription_id: str,
        resource_group: str,
        vault_name: str,
        *,
        endpoint: str | None = None,
        connection_verify: str | None = None,
        retry: RetrySettings | None = None,
    ) -> AzureVaultLockdown:
        """A lockdown for ``vault_name``; ``endpoint`` is the ARM base URL (public cloud when None; the token
        scope follows it). The SDK's retries are off: :mod:`.keyvault_retry` owns them."""
        options: dict[str, Any] = {"retry_total": 0}
        if endpoint is not None:
            options["credential_scopes"] = [endpoint.rstrip("/") + "/.default"]
        if connection_verify is not None:
            options["connection_verify"] = connection_verify
        client = KeyVaultManagementClient(credential, subscription_id, endpoint, **options)
        return cls(client, resource_group, vault_name, retry=retry)

    async def close(self) -> None:
        await self._client.close()

    def __repr__(self) -> str:
        return f"AzureVaultLockdown(resource_group={self._group!r}, vault={self._vault!r})"

    async def snapshot(self) -> VaultSnapshot:
        """The vault's current network ACLs, public access and access policies (one GET)."""
        vault = await self._call("read vault", lambda: self._client.vaults.get(self._group, self._vault))
        doc = vault.as_dict()
        props = doc.get("properties") or {}
        return VaultSnapshot(
            vault_id=str(doc.get("id") or ""),
            network_acls=props.get("networkAcls"),
            public_network_access=props.get("publicNetworkAccess"),
            access_policies=tuple(props.get("accessPolicies") or ()),
            rbac=bool(props.get("enableRbacAuthorization")),
        )

    async def lock_network(self, *, bypass: str = "AzureServices", ip_rules: Sequence[str] = ()) -> bool:
        """Default action Deny (only ``ip_rules`` and, with ``bypass``, trusted Azure services get in) and
        public network access Disabled; False when the vault was locked already (nothing sent)."""
        if bypass not in ("AzureServices", "None"):
            raise InvalidError("bypass is AzureServices or None")
        current = await self.snapshot()
        acls = current.network_acls or DEFAULT_NETWORK_ACLS
        wanted_rules = [{"value": rule} for rule in ip_rules]
        if (
            current.locked
            and acls.get("bypass") == bypass
            and list(acls.get("ipRules") or []) == wanted_rules
        ):
            return False
        rules = models.NetworkRuleSet(
            {
                "bypass": bypass,
                "defaultAction": "Deny",
                "ipRules": wanted_rules,
                "virtualNetworkRules": list(acls.get("virtualNetworkRules") or []),
            }
        )
        await self._patch(rules, "Disabled", "lock vault network")
        log.warning("vault %s locked: network default Deny, public access Disabled", self._vault)
        return True

    async def remove_access_policy(self, object_id: str) -> dict[str, Any] | None:
        """Remove every permission of ``object_id``; the removed entry, or None when it had none."""
        if not object_id:
            raise InvalidError("name the object id whose access policy to remove")
        current = await self.snapshot()
        if current.rbac:
            raise ConflictError(
                f"vault {self._vault} uses Azure RBAC, which ignores access policies: remove the role "
                "assignment instead"
            )
        entry = current.policy_of(object_id)
        if entry is None:
            return None
        await self._access_policy("remove", entry)
        log.warning("vault %s: access policy of %s removed", self._vault, object_id)
        return entry

    async def restore(
        self, snapshot: VaultSnapshot, *, object_ids: Sequence[str] = (), network: bool = True
    ) -> None:
        """Put back the network ACLs and public access (``network``) and the access-policy entries of
        ``object_ids`` as ``snapshot`` recorded them. Idempotent."""
        if network:
            acls = models.NetworkRuleSet(copy.deepcopy(snapshot.network_acls or DEFAULT_NETWORK_ACLS))
            await self._patch(acls, snapshot.public_network_access or "Enabled", "restore vault network")
        for object_id in object_ids:
            entry = snapshot.policy_of(object_id)
            if entry is not None:
                await self._access_policy("add", entry)
        log.warning(
            "vault %s restored (network=%s, access policies of %s)", self._vault, network, list(object_ids)
        )

    async def _patch(self, acls: models.NetworkRuleSet, public_access: str, what: str) -> None:
        properties = models.VaultPatchProperties(network_acls=acls, public_network_access=public_access)
        parameters = models.VaultPatchParameters(properties=properties)
        await self._call(what, lambda: self._client.vaults.update(self._group, self._vault, parameters))

    async def _access_policy(self, kind: str, entry: dict[str, Any]) -> None:
        policy = models.AccessPolicyEntry(copy.deepcopy(entry))
        properties = models.VaultAccessPolicyProperties(access_policies=[policy])
        parameters = models.VaultAccessPolicyParameters(properties=properties)
        await self._call(
            f"{kind} access policy",
            lambda: self._client.vaults.update_access_policy(self._group, self._vault, kind, parameters),
        )

    async def _call(self, what: str, send: Any) -> Any:
        return await call(f"{what} of vault {self._vault!r}", send, self._retry)

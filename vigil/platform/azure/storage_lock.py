"""Lockdown of an Azure storage account, reversible from the state recorded before it.

Target. The local :class:`~vigil.platform.storage.Storage` locks a *container*; on Azure the controls that
stop exfiltration (public blob access, shared-key access, the network rule set, the account keys, a
management lock) are *account* properties, so the target here is a storage account, named by its ARM id
(``/subscriptions/…/storageAccounts/<name>``, as events carry it in ``resource.id``) or ``<group>/<name>``.
This is a provider with ``check → plan_steps → apply_step → rollback`` for an Azure flavour of the
``lock_storage`` remediator, not an implementation of the container-level ``Storage`` protocol.

Steps, in this order, each idempotent and each re-reading state first:

1. ``restrict_access``: one PATCH that turns off anonymous blob access and shared-key access (account and
   service SAS stop working at once) and sets the network default action to ``Deny`` (dropping the IP and
   virtual-network allow rules unless ``keep_network_rules``). One PATCH, so there is no window in which
   some of it holds.
2. ``regenerate_keys``: ``key1`` then ``key2``, which kills every SAS signed with them and every client
   that holds them. A ``POST`` that is not idempotent: it is never re-sent blindly
   (:class:`~vigil.platform.azure.arm.SafeRetryPolicy`); after an ambiguous failure, or on a resumed run,
   the key's ``keyCreationTime`` is compared with the recorded one to learn whether it already happened.
3. ``revoke_user_delegation_keys``: Entra-signed SAS survive steps 1–2; this revokes them (repeating it is
   harmless).
4. ``apply_lock``: a ``ReadOnly`` management lock, **last**, because it blocks every later control-plane
   write and POST (regenerateKey, listKeys) on the account, ours included.

Rollback removes the lock **first** (nothing else can change while it is on) and only when this lockdown
added it, then PATCHes back the recorded blob-public, shared-key and network values that differ. Regenerated
keys and revoked delegation keys cannot come back; the rollback result says so.

Self-protection: the account that holds Vigil's own checkpoints (``protected_accounts``) is refused
outright — regenerating its keys or turning off shared-key access would stop Vigil's own ingestion.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from azure.core.exceptions import AzureError
from azure.mgmt.resource.locks.aio import ManagementLockClient
from azure.mgmt.resource.locks.models import ManagementLockObject
from azure.mgmt.storage.aio import StorageManagementClient
from azure.mgmt.storage.models import NetworkRuleSet, StorageAccountRegenerateKeyParameters
from azure.mgmt.storage.models import StorageAccountUpdateParameters as Update

from vigil.platform.azure.arm import ArmConfig, arm_errors, parse_id
from vigil.platform.errors import ForbiddenError, InvalidError, UnavailableError

STEPS: Final = ("restrict_access", "regenerate_keys", "revoke_user_delegation_keys", "apply_lock")
KEYS: Final = ("key1", "key2")

RBAC_ACTIONS: Final = (
    "Microsoft.Storage/storageAccounts/read",
    "Microsoft.Storage/storageAccounts/write",
    "Microsoft.Storage/storageAccounts/regeneratekey/action",
    "Microsoft.Storage/storageAccounts/revokeUserDelegationKeys/action",
    "Microsoft.Authorization/locks/read",
    "Microsoft.Authorization/locks/write",
    "Microsoft.Authorization/locks/delete",
)


class AzureStorageLock:
    """Lock down storage accounts of one subscription, and undo it."""

    RBAC_ACTIONS: Final = RBAC_ACTIONS

    def __init__(
        self,
        arm: ArmConfig,
        *,
        protected_accounts: Iterable[str] = (),
        lock_name: str = "vigil-lockdown",
        revoke_user_delegation: bool = True,
        keep_network_rules: bool = False,
    ) -> None:
        self._arm = arm
        # by account name, whichever form an entry has (name, <group>/<name>, an ARM id or a sub-resource's)
        self._protected = frozenset(_account_name(a).lower() for a in protected_accounts)
        self._lock_name = lock_name
        self._revoke_delegation = revoke_user_delegation
        self._keep_rules = keep_network_rules
        self._storage = arm.client(StorageManagementClient)
        self._locks = arm.client(ManagementLockClient)

    async def close(self) -> None:
        await self._storage.close()
        await self._locks.close()

    def locate(self, target: str) -> tuple[str, str]:
        """``(group, account)`` of a target; ForbiddenError for a protected account."""
        if target.startswith("/"):
            sub, group, provider, kind, name = parse_id(target)
            if sub.lower() != self._arm.subscription_id.lower():
                raise InvalidError(
                    f"storage account {target!r} is outside subscription {self._arm.subscription_id}"
                )
            if provider.lower() != "microsoft.storage" or kind.lower() != "storageaccounts":
                raise InvalidError(f"{target!r} is not a storage account id")
        else:
            group, _, name = target.partition("/")
            if not group or not name:
                raise InvalidError(f"storage target {target!r} must be an account id or <group>/<account>")
        if name.lower() in self._protected:
            raise ForbiddenError(f"protected: refusing to lock down Vigil's own storage account {name!r}")
        return group, name

    # -- reads ---------------------------------------------------------------------------------------------

    async def check(self, target: str) -> dict[str, Any]:
        """The account's lockdown-relevant state, JSON-ready (GETs only); this is what rollback restores."""
        group, name = self.locate(target)
        with arm_errors(f"read storage account {group}/{name}"):
            account = await self._storage.storage_accounts.get_properties(group, name)
        scope = self._scope(group, name)
        with arm_errors(f"list the locks on storage account {group}/{name}"):
            pages = self._locks.management_locks.list_at_resource_level(*self._lock_at(group, name))
            locks = [lk async for lk in pages]
        created = account.key_creation_time
        acls = account.network_rule_set
        return {
            "id": scope,
            "allow_blob_public_access": bool(account.allow_blob_public_access),
            # unset means allowed (the service default), and rollback must be able to write it back
            "allow_shared_key_access": account.allow_shared_key_access is not False,
            "network_acls": acls.as_dict() if acls is not None else {"defaultAction": "Allow"},
            "key_creation_time": {k: _iso(getattr(created, k, None) if created else None) for k in KEYS},
            "locks": sorted({str(lk.name): str(lk.level) for lk in locks}.items()),
            "lock": next((str(lk.level) for lk in locks if lk.name == self._lock_name), None),
        }

    def plan_steps(self, state: dict[str, Any]) -> list[str]:
        """The steps that take ``state`` to locked down, in order (none when it is locked down already)."""
        if self._restricted(state) and state["lock"] == "ReadOnly":
            return []
        steps = ["restrict_access"] if not self._restricted(state) else []
        steps.append("regenerate_keys")
        if self._revoke_delegation:
            steps.append("revoke_user_delegation_keys")
        return [*steps, "apply_lock"]

    # -- changes -------------------------------------------------------------------------------------------

    async def lock(self, target: str, *, before: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every step of :meth:`plan_steps`; returns ``{"before": …, "steps": {step: result}}``."""
        before = before or await self.check(target)
        done = {step: await self.apply_step(target, step, before) for step in self.plan_steps(before)}
        return {"before": before, "steps": done}

    async def apply_step(self, target: str, step: str, before: dict[str, Any]) -> dict[str, Any]:
        """Perform one step idempotently (``before`` is the state recorded before the first step)."""
        group, name = self.locate(target)
        what = f"storage account {group}/{name}"
        if step == "restrict_access":
            state = await self.check(target)
            patch = self._restriction(state)
            if not patch:
                return {"changed": False}
            with arm_errors(f"restrict access to {what}"):
                await self._storage.storage_accounts.update(group, name, Update(**patch))
            return {"changed": True, "set": sorted(patch)}
        if step == "regenerate_keys":
            return {
                "changed": True,
                "keys": [k for k in KEYS if await self._regenerate(group, name, k, before)],
            }
        if step == "revoke_user_delegation_keys":
            with arm_errors(f"revoke the user delegation keys of {what}"):
                await self._storage.storage_accounts.revoke_user_delegation_keys(group, name)
            return {"changed": True}
        if step == "apply_lock":
            body = ManagementLockObject(
                level="ReadOnly", notes="storage lockdown by vigil; remove to roll back"
            )
            with arm_errors(f"apply ReadOnly lock {self._lock_name} to {what}"):
                await self._locks.management_locks.create_or_update_at_resource_level(
                    *self._lock_at(group, name), self._lock_name, body
                )
            return {"changed": True, "lock": self._lock_name}
        raise InvalidError(f"unknown storage lockdown step {step!r}")

    async def rollback(self, target: str, before: dict[str, Any]) -> dict[str, Any]:
        """Lock off first (only ours, only if it was not there before), then the recorded values back."""
        group, name = self.locate(target)
        restored: dict[str, Any] = {}
        state = await self.check(target)
        if state["lock"] is not None and before.get("lock") is None:
            with arm_errors(f"remove lock {self._lock_name} from storage account {group}/{name}"):
                await self._locks.management_locks.delete_at_resource_level(
                    *self._lock_at(group, name), self._lock_name
                )
            restored["lock"] = None
            state = await self.check(target)
        patch: dict[str, Any] = {}
        for field in ("allow_blob_public_access", "allow_shared_key_access"):
            if state[field] != before[field]:
                patch[field] = before[field]
        if state["network_acls"] != before["network_acls"]:
            patch["network_rule_set"] = NetworkRuleSet(before["network_acls"])
        if patch:
            with arm_errors(f"restore the access settings of storage account {group}/{name}"):
                await self._storage.storage_accounts.update(group, name, Update(**patch))
            restored.update({k: before["network_acls" if k == "network_rule_set" else k] for k in patch})
        lost = ["account keys (regenerated)", "user delegation keys (revoked)"]
        return {"changed": bool(restored), "restored": restored, "not_restorable": lost}

    # -- internals -----------------------------------------------------------------------------------------

    def _restricted(self, state: dict[str, Any]) -> bool:
        return not self._restriction(state)

    def _restriction(self, state: dict[str, Any]) -> dict[str, Any]:
        patch: dict[str, Any] = {}
        if state["allow_blob_public_access"]:
            patch["allow_blob_public_access"] = False
        if state["allow_shared_key_access"]:
            patch["allow_shared_key_access"] = False
        acls = dict(state["network_acls"])
        open_rules = not self._keep_rules and (acls.get("ipRules") or acls.get("virtualNetworkRules"))
        if acls.get("defaultAction") != "Deny" or open_rules:
            new = {**acls, "defaultAction": "Deny"}
            if not self._keep_rules:
                new.update(ipRules=[], virtualNetworkRules=[])
            patch["network_rule_set"] = NetworkRuleSet(new)
        return patch

    async def _regenerate(self, group: str, name: str, key: str, before: dict[str, Any]) -> bool:
        """Regenerate ``key`` unless its creation time already moved past the recorded one; after an
        ambiguous failure, read that time instead of sending the POST again. True when regenerated now."""
        recorded = before["key_creation_time"].get(key)
        if await self._key_moved(group, name, key, recorded):
            return False
        try:
            with arm_errors(f"regenerate {key} of storage account {group}/{name}"):
                await self._storage.storage_accounts.regenerate_key(
                    group, name, StorageAccountRegenerateKeyParameters(key_name=key)
                )
        except (UnavailableError, AzureError):
            if await self._key_moved(group, name, key, recorded):
                return True  # it ran on the server; the error came after
            raise
        return True

    async def _key_moved(self, group: str, name: str, key: str, recorded: str | None) -> bool:
        with arm_errors(f"read storage account {group}/{name}"):
            account = await self._storage.storage_accounts.get_properties(group, name)
        created = account.key_creation_time
        now: datetime | None = getattr(created, key, None) if created else None
        return now is not None and (recorded is None or now > datetime.fromisoformat(recorded))

    def _lock_at(self, group: str, name: str) -> tuple[str, str, str, str, str]:
        """The ``*_at_resource_level`` arguments for an account. Not ``*_by_scope``: that operation
        percent-encodes the slashes of the scope into one path segment (``/%2Fsubscriptions%2F…``)."""
        return group, "Microsoft.Storage", "", "storageAccounts", name

    def _scope(self, group: str, name: str) -> str:
        return self._arm.resource_id(group, "Microsoft.Storage", "storageAccounts", name)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _account_name(entry: str) -> str:
    try:
        return parse_id(entry)[4]
    except InvalidError:
        return entry.rstrip("/").rsplit("/", 1)[-1]

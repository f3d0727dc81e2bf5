"""``lockdown_vault``: the Azure Key Vault lockdown, for a rule that sees a vault's keys being misused.

When a vault's firewall is opened or an unexpected principal reads keys, rotating or disabling one key is
not enough: the vault itself must stop answering the wrong callers. The provider in ``ctx.vault_lock``
(:class:`~vigil.platform.azure.keyvault_lockdown.AzureVaultLockdown`) holds the reversible levers; this
module maps them onto the remediator contract so that the core's gates (dry-run, approvals, blast radius,
idempotency, audit) apply unchanged:

* the provider is built for *one* vault (``azure.keyvault.resource_group`` / ``vault_name``), so the target
  (the vault's name, ``<group>/<name>`` or its ARM id, as events carry it in ``resource.id``) must name that
  vault: every read compares it with the ARM id the vault reports, so a stored plan resumed after the
  configuration moved to another vault fails instead of locking the wrong one;
* ``check`` is one GET (the provider's snapshot), so a dry run never writes; ``plan`` has a step
  ``lock_network`` (network ACL default action Deny with the parameters' bypass and IP rules, public network
  access Disabled) unless the vault is locked that way already, and a step ``remove_access_policy`` when
  the parameters name a principal that still has an entry. ``before`` is the snapshot (ARM's field names,
  no secret), the record a rollback restores. A vault in Azure RBAC mode ignores access policies: asking
  to remove one there fails at planning, before anything changes (remove the role assignment instead);
* ``apply_step`` re-reads the vault and sends nothing when the step's effect is there (a resumed step never
  mutates twice); ``verify`` passes when a fresh read needs no step;
* ``rollback`` puts back what the steps took and has not come back since: the network ACLs and public
  access as recorded, and the principal's access-policy entry. A second rollback sends nothing.

The desired network state is the provider's own (``AzureVaultLockdown.lock_network`` sends nothing exactly
when :func:`_needed` plans no ``lock_network``), so plan, apply and verify agree. Self-protection is
:meth:`Remediator.refuse_protected` (``Protected.vaults``), before any request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable
from typing import Any, ClassVar, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vigil.platform.errors import ConflictError, InvalidError, NotFoundError
from vigil.remediators.base import (
    Context,
    Plan,
    RemediationError,
    Remediator,
    Step,
    VaultLockProvider,
    VaultState,
)

T = TypeVar("T")

#: what each step does, in the order they run
STEP_DESCRIPTIONS: Final = {
    "lock_network": "network ACL default action Deny and public network access Disabled",
    "remove_access_policy": "remove every access-policy permission of the principal",
}

#: the provider's RBAC actions (the union of ``keyvault_lockdown.RBAC_ACTIONS``; a test holds them equal),
#: kept here so that importing the remediator, e.g. for ``vigil actions``, needs no Azure SDK
RBAC_ACTIONS: Final = (
    "Microsoft.KeyVault/vaults/read",
    "Microsoft.KeyVault/vaults/write",
    "Microsoft.KeyVault/vaults/accessPolicies/write",
)

#: what Azure applies to a vault without ``networkAcls`` (``keyvault_lockdown.DEFAULT_NETWORK_ACLS``)
OPEN_NETWORK_ACLS: Final = {
    "bypass": "AzureServices",
    "defaultAction": "Allow",
    "ipRules": [],
    "virtualNetworkRules": [],
}

_GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class LockdownVaultParams(BaseModel):
    """What the lockdown keeps open and whom it removes; every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the Entra object id whose access policy to remove (all its permissions); None: the network only
    object_id: str | None = Field(default=None, pattern=_GUID)
    #: whether trusted Azure services still get through the closed firewall
    bypass: Literal["AzureServices", "None"] = "AzureServices"
    #: IPv4 addresses or CIDR ranges still let in (Vigil's own egress, a jump host); stored as CIDR, as
    #: ARM reports them, so that a locked vault compares equal to the request
    ip_rules: tuple[str, ...] = ()

    @field_validator("object_id")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value is not None else None

    @field_validator("ip_rules")
    @classmethod
    def _cidr(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(str(ipaddress.IPv4Network(rule.strip(), strict=True)) for rule in value)
        except ValueError as exc:
            raise ValueError(f"ip_rules: {exc} (an IPv4 address or CIDR range, host bits zero)") from None


class LockdownVault(Remediator):
    """Lock down an Azure key vault: firewall closed, public access off, a principal's access removed."""

    name: ClassVar[str] = "lockdown_vault"
    summary: ClassVar[str] = (
        "lock down an Azure key vault: network default Deny, public network access Disabled, "
        "optionally a principal's access policy removed"
    )
    Params: ClassVar[type[BaseModel]] = LockdownVaultParams
    permissions: ClassVar[tuple[str, ...]] = tuple(f"azure:{action}" for action in RBAC_ACTIONS)
    reversible: ClassVar[bool] = True
    target_kind: ClassVar[str] = "vault"

    async def fleet(self, ctx: Context) -> list[str]:
        # the provider acts on one configured vault: that vault is every target this remediator can have
        lock = _provider(ctx)
        snap = await _call(lock.snapshot(), "(the configured vault)")
        return [snap.vault_id]

    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        self.refuse_protected(ctx, target)
        return (await _read(_provider(ctx), target)).to_json()

    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        p = _params(params.model_dump())
        if p.object_id is not None and state.get("rbac"):
            raise RemediationError(
                f"lockdown_vault: vault {target!r} uses Azure RBAC, which ignores access policies: "
                f"remove the role assignments of {p.object_id} instead"
            )
        steps = []
        for step in _needed(state, p):
            data: dict[str, Any] = {"bypass": p.bypass, "ip_rules": list(p.ip_rules)}
            if step == "remove_access_policy":
                data = {"object_id": p.object_id}
            steps.append(Step(step, f"{STEP_DESCRIPTIONS[step]} on vault {target!r}", data))
        raw = p.model_dump(mode="json")
        return Plan(self.name, target, raw, tuple(steps), dict(state), noop=not steps)

    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        self.refuse_protected(ctx, plan.target)
        if not 0 <= index < len(plan.steps):
            raise RemediationError(f"lockdown_vault: the plan has no step {index}")
        step = plan.steps[index].name
        if step not in STEP_DESCRIPTIONS:
            raise RemediationError(f"lockdown_vault: unknown step {step!r}")
        p = _params(plan.params)
        lock = _provider(ctx)
        current = (await _read(lock, plan.target)).to_json()
        if step not in _needed(current, p):  # done already (an earlier run, or someone else)
            return {"step": step, "changed": False}
        if step == "lock_network":
            changed = await _call(lock.lock_network(bypass=p.bypass, ip_rules=p.ip_rules), plan.target)
            return {"step": step, "changed": changed, "bypass": p.bypass, "ip_rules": list(p.ip_rules)}
        entry = _entry(current, p.object_id)
        assert entry is not None  # _needed planned the step because the entry is there
        removed = await _call(lock.remove_access_policy(str(entry["objectId"])), plan.target)
        return {"step": step, "changed": removed is not None, "removed": removed}

    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        current = (await _read(_provider(ctx), plan.target)).to_json()
        remaining = _needed(current, _params(plan.params))
        if remaining:
            return f"vault {plan.target!r} is not locked down: still to do {', '.join(remaining)}"
        return None

    async def rollback(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        """Restore what the plan's steps took and is still missing; nothing is sent when all is back."""
        restored: dict[str, Any] = {"network": False, "access_policies": []}
        if plan.noop:
            return {"changed": False, "restored": restored}
        self.refuse_protected(ctx, plan.target)
        lock = _provider(ctx)
        current = await _read(lock, plan.target)
        now = current.to_json()
        taken = {s.name for s in plan.steps}
        restored["network"] = "lock_network" in taken and _network(now) != _network(plan.before)
        if "remove_access_policy" in taken:
            entry = _entry(plan.before, _params(plan.params).object_id)
            if entry is not None and not _holds(_entry(now, str(entry["objectId"])), entry):
                restored["access_policies"] = [str(entry["objectId"])]
        changed = bool(restored["network"] or restored["access_policies"])
        if changed:
            record = type(current).from_json(plan.before)
            objects = restored["access_policies"]
            await _call(lock.restore(record, object_ids=objects, network=restored["network"]), plan.target)
        return {"changed": changed, "restored": restored}


def _provider(ctx: Context) -> VaultLockProvider:
    if ctx.vault_lock is None:
        raise RemediationError("lockdown_vault: no Azure vault lockdown provider configured")
    return ctx.vault_lock


def _params(raw: dict[str, Any]) -> LockdownVaultParams:
    return LockdownVaultParams.model_validate(raw)


def _needed(state: dict[str, Any], p: LockdownVaultParams) -> list[str]:
    """The steps that take the vault recorded in ``state`` (a snapshot's JSON) to the locked state."""
    steps = []
    acls = state.get("network_acls") or OPEN_NETWORK_ACLS
    locked = acls.get("defaultAction") == "Deny" and state.get("public_network_access") == "Disabled"
    wanted = [{"value": rule} for rule in p.ip_rules]
    if not (locked and acls.get("bypass") == p.bypass and list(acls.get("ipRules") or []) == wanted):
        steps.append("lock_network")
    if p.object_id is not None and _entry(state, p.object_id) is not None:
        steps.append("remove_access_policy")
    return steps


def _entry(state: dict[str, Any], object_id: str | None) -> dict[str, Any] | None:
    """The access-policy entry of ``object_id`` in a snapshot's JSON (object ids compare case-insensitively,
    since a rule may write a GUID in either case)."""
    if object_id is None:
        return None
    for entry in state.get("access_policies") or ():
        if str(entry.get("objectId", "")).lower() == object_id.lower():
            return dict(entry)
    return None


def _holds(current: dict[str, Any] | None, recorded: dict[str, Any]) -> bool:
    """Whether ``current`` grants every permission ``recorded`` did (then there is nothing to put back)."""
    if current is None:
        return False
    have = current.get("permissions") or {}
    for area, perms in (recorded.get("permissions") or {}).items():
        present = {str(q).lower() for q in have.get(area) or ()}
        if any(str(perm).lower() not in present for perm in perms or ()):
            return False
    return True


def _network(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The network settings as Azure applies them (no ``networkAcls`` is the open default)."""
    return dict(state.get("network_acls") or OPEN_NETWORK_ACLS), state.get(
        "public_network_access"
    ) or "Enabled"


def _address(target: str) -> tuple[str, str, str]:
    """``(subscription, group, name)`` of a vault named by ``name``, ``<group>/<name>`` or an ARM id (of the
    vault or one of its sub-resources), lower case, ``""`` where the form does not say; RemediationError for
    anything else."""
    parts = [p for p in target.strip().split("/") if p]
    if parts and parts[0].lower() == "subscriptions":
        found = {"subscriptions": "", "resourcegroups": "", "vaults": ""}
        for i, part in enumerate(parts[:-1]):
            key = part.lower()
            ours = key != "vaults" or parts[i - 1].lower() == "microsoft.keyvault"
            if key in found and not found[key] and ours:
                found[key] = parts[i + 1].lower()
        if found["vaults"]:
            return found["subscriptions"], found["resourcegroups"], found["vaults"]
    elif 1 <= len(parts) <= 2:
        return "", parts[0].lower() if len(parts) == 2 else "", parts[-1].lower()
    raise RemediationError(
        f"lockdown_vault: target {target!r} must be a vault name, <group>/<name> or an ARM id"
    )


async def _read(lock: VaultLockProvider, target: str) -> VaultState:
    """The vault's snapshot, after making sure that ``target`` names the vault the provider acts on."""
    want = _address(target)
    snap = await _call(lock.snapshot(), target)
    have = _address(snap.vault_id)
    if not all(w == h for w, h in zip(want, have, strict=True) if w):
        raise RemediationError(
            f"lockdown_vault: target {target!r} is not the vault the lockdown acts on ({snap.vault_id!r})"
        )
    return snap


async def _call(pending: Awaitable[T], target: str) -> T:
    """Await a provider call; a missing vault, a malformed request or an RBAC-mode refusal becomes a
    RemediationError (the remediation cannot proceed), other platform errors pass through as they are."""
    try:
        return await pending
    except NotFoundError:
        raise RemediationError(f"lockdown_vault: no vault {target!r}") from None
    except (InvalidError, ConflictError) as exc:
        raise RemediationError(f"lockdown_vault: {exc}") from None

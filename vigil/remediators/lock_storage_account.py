"""``lock_storage_account``: the Azure storage-account lockdown, asked for by a rule like ``lock_storage``.

``lock_storage`` locks a container of the local platform. On Azure the controls that stop exfiltration
(anonymous blob access, shared-key access, the network rule set, the account keys, a management lock) are
properties of the *account*, so this remediator's target is a storage account: its ARM id (what events
carry in ``resource.id``, the rules' default target) or ``<group>/<account>``. A bare account name is not
enough, because ARM addresses an account through its resource group.

The work is done by the provider in ``ctx.storage_lock``
(:class:`~vigil.platform.azure.storage_lock.AzureStorageLock`); this module maps it onto the remediator
contract so that the core's gates (dry-run, approvals, blast radius, idempotency, audit) apply unchanged:

* ``check`` is the provider's ``check`` (GETs only), so a dry run never writes;
* ``plan`` has one step per provider step, in the provider's order (``restrict_access``,
  ``regenerate_keys``, ``revoke_user_delegation_keys``, ``apply_lock`` — the ``ReadOnly`` lock last, since
  it blocks every later write), ``before`` = the checked state, and no steps when the account is locked
  down already;
* ``apply_step`` hands the provider the recorded ``before``: ``regenerate_keys`` compares each key's
  creation time with it, so a resumed step never regenerates a key twice, and ``restrict_access`` re-reads
  and patches only what is still open. ``apply_lock`` is skipped when our lock is on already;
  ``revoke_user_delegation_keys`` cannot be read back and is re-sent (harmless: it revokes again);
* ``verify`` passes when a fresh check plans nothing;
* ``rollback`` removes the lock first, then restores the recorded access settings. Regenerated keys and
  revoked delegation keys cannot come back; the result lists them under ``not_restorable``.

Self-protection happens twice: :meth:`Remediator.refuse_protected` (``Protected.storage_accounts``) before
any request, and the provider's own ``protected_accounts``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, ClassVar, Final

from pydantic import BaseModel

from vigil.platform.errors import InvalidError, NotFoundError
from vigil.remediators.base import (
    Context,
    NoParams,
    Plan,
    RemediationError,
    Remediator,
    Step,
    StorageLockProvider,
)

#: what each provider step does, in the provider's order (kept here so that importing the remediator,
#: e.g. for ``vigil actions``, needs no Azure SDK; a test holds it equal to the provider's ``STEPS``)
STEP_DESCRIPTIONS: Final = {
    "restrict_access": "turn off anonymous blob access and shared-key access, network default action Deny",
    "regenerate_keys": "regenerate key1 and key2 (every SAS signed with them stops working)",
    "revoke_user_delegation_keys": "revoke the user delegation keys (Entra-signed SAS stop working)",
    "apply_lock": "apply a ReadOnly management lock (last: it blocks every later write)",
}

#: what a rollback cannot give back, by the step that took it
NOT_RESTORABLE: Final = {
    "regenerate_keys": "account keys (regenerated)",
    "revoke_user_delegation_keys": "user delegation keys (revoked)",
}

#: the provider's RBAC actions (``AzureStorageLock.RBAC_ACTIONS``), as ``azure:<action>``
RBAC_ACTIONS: Final = (
    "Microsoft.Storage/storageAccounts/read",
    "Microsoft.Storage/storageAccounts/write",
    "Microsoft.Storage/storageAccounts/regeneratekey/action",
    "Microsoft.Storage/storageAccounts/revokeUserDelegationKeys/action",
    "Microsoft.Authorization/locks/read",
    "Microsoft.Authorization/locks/write",
    "Microsoft.Authorization/locks/delete",
)


class LockStorageAccount(Remediator):
    """Lock down an Azure storage account: access off, keys regenerated, SAS revoked, ReadOnly lock."""

    name: ClassVar[str] = "lock_storage_account"
    summary: ClassVar[str] = (
        "lock down an Azure storage account: public and shared-key access off, network deny, "
        "keys regenerated, ReadOnly lock"
    )
    Params: ClassVar[type[BaseModel]] = NoParams
    permissions: ClassVar[tuple[str, ...]] = tuple(f"azure:{action}" for action in RBAC_ACTIONS)
    reversible: ClassVar[bool] = True
    target_kind: ClassVar[str] = "storage_account"

    async def fleet(self, ctx: Context) -> list[str]:
        # the provider cannot list a subscription's accounts (yet): an unknown fleet makes the core refuse
        # a max_percent cap, which is the safe answer
        raise RemediationError(
            "lock_storage_account: the storage lock provider cannot list storage accounts, "
            "so a max_percent blast-radius cap cannot be evaluated"
        )

    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        self.refuse_protected(ctx, target)
        return await _read(_provider(ctx), target)

    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        """One step per provider step. ``plan`` gets no context, and which steps there are depends on the
        provider's configuration (``revoke_user_delegation``), so :meth:`check` asks the provider and
        leaves its answer in the state as ``planned_steps``; ``before`` is the provider's state without it.
        """
        raw = NoParams.model_validate(params.model_dump()).model_dump(mode="json")
        names = [str(n) for n in state.get("planned_steps", [])]
        unknown = [n for n in names if n not in STEP_DESCRIPTIONS]
        if unknown:
            raise RemediationError(f"lock_storage_account: the provider planned unknown steps {unknown}")
        steps = tuple(Step(n, f"{STEP_DESCRIPTIONS[n]} on storage account {target!r}") for n in names)
        before = {k: v for k, v in state.items() if k != "planned_steps"}
        return Plan(self.name, target, raw, steps, before, noop=not steps)

    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        self.refuse_protected(ctx, plan.target)
        if not 0 <= index < len(plan.steps):
            raise RemediationError(f"lock_storage_account: the plan has no step {index}")
        step = plan.steps[index].name
        if step not in STEP_DESCRIPTIONS:
            raise RemediationError(f"lock_storage_account: unknown step {step!r}")
        lock = _provider(ctx)
        if step == "apply_lock":
            state = await _read(lock, plan.target)
            if state["lock"] == "ReadOnly":
                return {"changed": False, "lock": state["lock"]}
        out = dict(await _call(lock.apply_step(plan.target, step, plan.before), plan.target))
        if step == "regenerate_keys":
            out["changed"] = bool(out.get("keys"))  # none moved now: an earlier run regenerated them
        return out

    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        remaining = (await _read(_provider(ctx), plan.target))["planned_steps"]
        if remaining:
            return f"storage account {plan.target!r} is not locked down: still to do {', '.join(remaining)}"
        return None

    async def rollback(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        if plan.noop:
            return {"changed": False, "restored": {}, "not_restorable": []}
        out = dict(await _call(_provider(ctx).rollback(plan.target, plan.before), plan.target))
        taken = {s.name for s in plan.steps}
        out["not_restorable"] = [what for step, what in NOT_RESTORABLE.items() if step in taken]
        return out


def _provider(ctx: Context) -> StorageLockProvider:
    if ctx.storage_lock is None:
        raise RemediationError("lock_storage_account: no Azure storage lock provider configured")
    return ctx.storage_lock


async def _read(lock: StorageLockProvider, target: str) -> dict[str, Any]:
    """The provider's state of ``target`` with the steps it would take (``planned_steps``)."""
    state = dict(await _call(lock.check(target), target))
    state["planned_steps"] = lock.plan_steps(state)
    return state


async def _call(pending: Awaitable[dict[str, Any]], target: str) -> dict[str, Any]:
    """Await a provider call; a missing account or a malformed target becomes a RemediationError (the
    remediation cannot proceed), other platform errors pass through as they are."""
    try:
        return await pending
    except NotFoundError:
        raise RemediationError(f"lock_storage_account: no storage account {target!r}") from None
    except InvalidError as exc:
        raise RemediationError(f"lock_storage_account: {exc}") from None

"""lock_storage_account through the real AzureStorageLock and mgmt SDK clients, against the loopback fake ARM.

What the fake's ledger proves: a dry run (check + plan) only reads, the steps run in the provider's order
with the lock last, a re-run step sends no second mutation (``revoke_user_delegation_keys`` excepted: it
cannot be read back and repeating it is harmless), rollback removes the lock before anything else, and a
protected account or a missing provider fails before any request.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.platform.azure.fake_arm import FakeArm, mutations, serving
from vigil.platform.azure.arm import ArmConfig
from vigil.platform.azure.storage_lock import STEPS, AzureStorageLock
from vigil.platform.errors import ForbiddenError
from vigil.remediators.base import Context, Plan, Protected, RemediationError, remediators
from vigil.remediators.lock_storage_account import RBAC_ACTIONS, STEP_DESCRIPTIONS, LockStorageAccount

from .conftest import Env, plan_for, run

R = LockStorageAccount()
RG = "rg-data"
ACLS = {"defaultAction": "Allow", "bypass": "AzureServices", "ipRules": [{"value": "203.0.113.0/24", "action": "Allow"}],
        "virtualNetworkRules": []}  # fmt: skip


@dataclasses.dataclass
class Arm:
    fake: FakeArm
    config: ArmConfig
    rid: str  # the open account ``trainingdata``

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a step may change: the account's properties, its keys and the locks on it."""
        props = dict(self.fake.get(self.rid)["properties"])
        return props, dict(self.fake.keys[self.rid.lower()]), self.fake.locks_on(self.rid)


@pytest.fixture
def arm(tmp_path: Path) -> Iterator[Arm]:
    with serving(tmp_path / "tls") as (fake, config):
        rid = fake.add_account(RG, "trainingdata", networkAcls=dict(ACLS))
        fake.add_account(RG, "vigilcheckpoints")
        yield Arm(fake, config, rid)


def azure_ctx(env: Env, locker: AzureStorageLock, *protected: str) -> Context:
    return dataclasses.replace(
        env.ctx, storage_lock=locker, protected=Protected(storage_accounts=frozenset(protected))
    )


def test_step_names_and_permissions_are_the_providers() -> None:
    assert tuple(STEP_DESCRIPTIONS) == STEPS
    assert RBAC_ACTIONS == AzureStorageLock.RBAC_ACTIONS
    assert R.permissions == tuple(f"azure:{a}" for a in AzureStorageLock.RBAC_ACTIONS)


def test_dry_run_plans_every_step_lock_last_and_only_reads(env: Env, arm: Arm) -> None:
    async def scenario() -> tuple[Plan, str | None]:
        locker = AzureStorageLock(arm.config)
        try:
            ctx = azure_ctx(env, locker)
            plan = await plan_for(R, ctx, arm.rid)
            return plan, await R.verify(ctx, plan)
        finally:
            await locker.close()

    plan, verdict = run(scenario())
    assert [s.name for s in plan.steps] == list(STEPS)
    assert plan.steps[-1].name == "apply_lock" and not plan.noop
    assert plan.before["allow_blob_public_access"] is True and plan.before["lock"] is None
    assert plan.before["network_acls"]["ipRules"] == ACLS["ipRules"]
    assert "planned_steps" not in plan.before
    assert verdict is not None and "not locked down" in verdict
    assert arm.fake.ledger and {c.method for c in arm.fake.ledger} == {"GET"}


def test_apply_each_step_twice_then_verify_and_a_fresh_plan_is_a_noop(env: Env, arm: Arm) -> None:
    async def scenario() -> list[dict[str, Any]]:
        locker = AzureStorageLock(arm.config)
        try:
            ctx = azure_ctx(env, locker)
            plan = await plan_for(R, ctx, arm.rid)
            first: list[tuple[str, str]] = []
            results = []
            for index, step in enumerate(plan.steps):
                start = len(arm.fake.ledger)
                results.append(await R.apply_step(ctx, plan, index))
                first += mutations(arm.fake, start)
                # a crash before the progress was stored: the executor runs the step again
                state, start = arm.snapshot(), len(arm.fake.ledger)
                again = await R.apply_step(ctx, plan, index)
                assert arm.snapshot() == state, f"re-running {step.name} changed the account"
                if step.name == "revoke_user_delegation_keys":
                    assert mutations(arm.fake, start) == [("POST", "trainingdata/revokeUserDelegationKeys")]
                else:
                    assert mutations(arm.fake, start) == [], step.name
                    assert again["changed"] is False, step.name
            assert first == [
                ("PATCH", "storageAccounts/trainingdata"),
                ("POST", "trainingdata/regenerateKey"),
                ("POST", "trainingdata/regenerateKey"),
                ("POST", "trainingdata/revokeUserDelegationKeys"),
                ("PUT", "locks/vigil-lockdown"),
            ]
            assert await R.verify(ctx, plan) is None
            assert (await plan_for(R, ctx, arm.rid)).noop
            return results
        finally:
            await locker.close()

    results = run(scenario())
    assert [r["changed"] for r in results] == [True, True, True, True]
    assert results[1]["keys"] == ["key1", "key2"]
    props = arm.fake.get(arm.rid)["properties"]
    assert (props["allowBlobPublicAccess"], props["allowSharedKeyAccess"]) == (False, False)
    assert props["networkAcls"]["defaultAction"] == "Deny"
    assert [lk["properties"]["level"] for lk in arm.fake.locks_on(arm.rid)] == ["ReadOnly"]


def test_rollback_removes_the_lock_first_and_restores_the_recorded_properties(env: Env, arm: Arm) -> None:
    original = dict(arm.fake.get(arm.rid)["properties"])
    keys_before = dict(arm.fake.keys[arm.rid.lower()])

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        locker = AzureStorageLock(arm.config)
        try:
            ctx = azure_ctx(env, locker)
            plan = await plan_for(R, ctx, f"{RG}/trainingdata")  # the <group>/<account> form
            for index in range(len(plan.steps)):
                await R.apply_step(ctx, plan, index)
            locked_plan = await plan_for(R, ctx, arm.rid)
            start = len(arm.fake.ledger)
            undone = await R.rollback(ctx, plan)
            assert mutations(arm.fake, start) == [
                ("DELETE", "locks/vigil-lockdown"),  # first: nothing else can change while it is on
                ("PATCH", "storageAccounts/trainingdata"),
            ]
            start = len(arm.fake.ledger)
            twice = await R.rollback(ctx, plan)
            noop = await R.rollback(ctx, locked_plan)  # a no-op plan has nothing to undo
            assert mutations(arm.fake, start) == []
            return undone, twice, noop
        finally:
            await locker.close()

    undone, twice, noop = run(scenario())
    restored = arm.fake.get(arm.rid)["properties"]
    for name in ("allowBlobPublicAccess", "allowSharedKeyAccess", "networkAcls", "publicNetworkAccess"):
        assert restored[name] == original[name], name
    assert arm.fake.locks_on(arm.rid) == []
    assert all(arm.fake.keys[arm.rid.lower()][k] != keys_before[k] for k in ("key1", "key2"))
    assert undone["changed"] is True and undone["restored"]["lock"] is None
    assert undone["not_restorable"] == ["account keys (regenerated)", "user delegation keys (revoked)"]
    assert twice["changed"] is False
    assert noop == {"changed": False, "restored": {}, "not_restorable": []}


def test_a_rollback_that_fails_half_way_is_finished_by_a_retry(env: Env, arm: Arm) -> None:
    """Reliability C12: the lock comes off, then restoring the properties is refused (a role removed
    meanwhile, say): the rollback fails with the account half-restored (unlocked, still closed). Once the
    cause is fixed a retry does only what is left: one PATCH, the lock not touched again."""
    original = dict(arm.fake.get(arm.rid)["properties"])

    async def scenario() -> None:
        locker = AzureStorageLock(arm.config)
        try:
            ctx = azure_ctx(env, locker)
            plan = await plan_for(R, ctx, arm.rid)
            for index in range(len(plan.steps)):
                await R.apply_step(ctx, plan, index)
            arm.fake.fail("PATCH", "storageAccounts/trainingdata$", 403)
            with pytest.raises(ForbiddenError, match="restore the access settings"):
                await R.rollback(ctx, plan)
            assert arm.fake.locks_on(arm.rid) == []  # half-way: unlocked ...
            assert arm.fake.get(arm.rid)["properties"]["allowSharedKeyAccess"] is False  # ... still closed
            start = len(arm.fake.ledger)
            done = await R.rollback(ctx, plan)
            assert mutations(arm.fake, start) == [("PATCH", "storageAccounts/trainingdata")]
            assert done["changed"] is True and "lock" not in done["restored"]
        finally:
            await locker.close()

    run(scenario())
    restored = arm.fake.get(arm.rid)["properties"]
    for name in ("allowBlobPublicAccess", "allowSharedKeyAccess", "networkAcls", "publicNetworkAccess"):
        assert restored[name] == original[name], name


def test_without_delegation_revocation_the_plan_and_rollback_say_less(env: Env, arm: Arm) -> None:
    async def scenario() -> tuple[Plan, dict[str, Any]]:
        locker = AzureStorageLock(arm.config, revoke_user_delegation=False)
        try:
            ctx = azure_ctx(env, locker)
            plan = await plan_for(R, ctx, arm.rid)
            for index in range(len(plan.steps)):
                await R.apply_step(ctx, plan, index)
            assert await R.verify(ctx, plan) is None
            return plan, await R.rollback(ctx, plan)
        finally:
            await locker.close()

    plan, undone = run(scenario())
    assert [s.name for s in plan.steps] == ["restrict_access", "regenerate_keys", "apply_lock"]
    assert undone["not_restorable"] == ["account keys (regenerated)"]
    assert arm.fake.calls("POST", "revokeUserDelegationKeys") == []


def test_a_protected_account_is_refused_before_any_request(env: Env, arm: Arm) -> None:
    theirs = arm.fake.rid(RG, "Microsoft.Storage", "storageAccounts", "vigilcheckpoints")

    async def scenario() -> None:
        locker = AzureStorageLock(arm.config)
        try:
            plan = await plan_for(R, azure_ctx(env, locker), theirs)  # planned before it was protected
            guarded = azure_ctx(env, locker, "VigilCheckpoints")
            start = len(arm.fake.ledger)
            for target in (theirs, f"{RG}/vigilcheckpoints", theirs.upper()):
                with pytest.raises(RemediationError, match=r"^protected: lock_storage_account refuses"):
                    await plan_for(R, guarded, target)
            with pytest.raises(RemediationError, match=r"^protected: "):
                await R.apply_step(guarded, plan, 0)
            assert len(arm.fake.ledger) == start
        finally:
            await locker.close()

    run(scenario())
    assert arm.fake.get(theirs)["properties"]["allowSharedKeyAccess"] is True


def test_protected_covers_storage_accounts_by_name_and_keeps_the_other_kinds() -> None:
    p = Protected(keys=frozenset({"audit"}), containers=frozenset({"ckpt"}), nodes=frozenset({"n1"}),
                  storage_accounts=frozenset({"VigilCheckpoints", f"{RG}/other"}))  # fmt: skip
    rid = f"/subscriptions/s/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/vigilcheckpoints"
    for target in ("vigilcheckpoints", f"{RG}/VIGILCHECKPOINTS", rid, f"{rid}/blobServices/default", "other"):
        assert p.covers("storage_account", target), target
    for target in ("trainingdata", "", f"{RG}/vigilcheckpoints2"):
        assert not p.covers("storage_account", target), target
    assert (p.covers("key", "audit"), p.covers("key", "Audit"), p.covers("container", "ckpt")) == (
        True,
        False,
        True,
    )
    assert (p.covers("node", "n1"), p.covers("node", "vigilcheckpoints")) == (True, False)
    assert not p.covers("container", "vigilcheckpoints") and not Protected().covers("storage_account", "x")


def test_missing_provider_and_bad_targets_are_clear_errors(env: Env, arm: Arm) -> None:
    async def scenario() -> None:
        plan = Plan(R.name, arm.rid, {}, (), {})
        for call in (R.check(env.ctx, arm.rid, R.params({})), R.verify(env.ctx, plan), R.rollback(
                env.ctx, dataclasses.replace(plan, noop=False))):  # fmt: skip
            with pytest.raises(RemediationError, match="no Azure storage lock provider configured"):
                await call
        with pytest.raises(RemediationError, match="lock_storage_account: no Azure storage lock provider"):
            await R.apply_step(env.ctx, Plan.from_json({**plan.to_json(), "steps": [
                {"name": "apply_lock", "description": "", "data": {}}]}), 0)  # fmt: skip
        assert arm.fake.ledger == []

        locker = AzureStorageLock(arm.config)
        try:
            ctx = azure_ctx(env, locker)
            with pytest.raises(RemediationError, match=f"no storage account '{RG}/ghost'"):
                await plan_for(R, ctx, f"{RG}/ghost")
            with pytest.raises(RemediationError, match="must be an account id or <group>/<account>"):
                await plan_for(R, ctx, "trainingdata")
            with pytest.raises(RemediationError, match="the plan has no step 0"):
                await R.apply_step(ctx, Plan(R.name, arm.rid, {}, (), {}), 0)
            with pytest.raises(RemediationError, match="cannot list storage accounts"):
                await R.fleet(ctx)
        finally:
            await locker.close()

    run(scenario())


def test_the_remediator_is_registered_and_keeps_the_contract() -> None:
    cls = remediators.get("lock_storage_account")
    assert cls is LockStorageAccount and not inspect.isabstract(cls)
    assert "lock_storage_account" in remediators.names()
    assert cls.target_kind == "storage_account" and cls.reversible
    assert cls.summary and cls.__doc__ and inspect.getmodule(cls).__doc__
    assert cls.permissions and all(p.startswith("azure:Microsoft.") for p in cls.permissions)
    assert cls.Params.model_config.get("extra") == "forbid"
    cls.Params.model_validate({})
    with pytest.raises(ValueError):
        R.params({"lock": "read_only"})  # no parameters: a typo is an error at load time
